"""The Celery app of the ``celery`` queue backend: Redis as broker and result backend, and the
tasks that call the same Prefect flows as every other front door.

Start a worker, consuming the queues in priority order::

    celery -A deployments.celery_app worker -Q ingestflow.high,ingestflow.normal,ingestflow.low

Redis has no message priorities, so each priority is its own queue (``ingestflow.high``,
``ingestflow.normal``, the default, and ``ingestflow.low``). The broker option
``queue_order_strategy="priority"`` makes the worker's BRPOP list the queue keys in the order
given to ``-Q`` (Redis answers from the first non-empty key), so a high job waiting is always
taken before a normal one. kombu's default strategy, round robin, would rotate that order.
Without ``-Q`` the worker consumes all three, in the same order.

**Paused queues.** An operator may pause a queue (``POST /v1/ops/queues/{queue}:pause``): the
workers consuming it stop (Celery's ``cancel_consumer``), and the pause is kept in Redis
(``PAUSED_QUEUES``), so a worker that starts while it holds leaves the queue alone too. Each
such worker is noted with the queue, and resuming restarts consumption on exactly those
workers (``add_consumer``): a worker never takes a queue its ``-Q`` did not name.

Existing Celery users call the tasks by name like any other::

    from deployments.celery_app import ingest
    result = ingest.delay(sources=["s3://docs/a.pdf"], collection="docs")
    result.get()  # {"counts": {"indexed": 1}, "flow_run_id": "...", "failures": [], ...}

or, without importing this module, ``app.send_task("ingestflow.ingest", kwargs=...)``.

A task calls the flow directly (``flows.ingest_batch`` / ``flows.delete_documents``), so the
run shows on the Prefect server named by ``PREFECT_API_URL`` (or a server on 127.0.0.1:4200,
see ``deployments.prefect_server``; never an ephemeral server per task).

**A large job.** An ingest job with more documents than one part
(``INGESTFLOW_FAN_OUT_PART_DOCUMENTS``) is split (``flows.fan_out``): its task sends helper
tasks (``ingestflow.ingest_parts``) to its own queue, and every worker that takes one does
parts of the job while the job's own task does parts too and gathers the outcomes.

**A worker that dies mid-task.** Tasks are acknowledged late (``task_acks_late``) and a task
whose worker process is lost is rejected back to the queue (``task_reject_on_worker_lost``);
a worker killed outright (SIGKILL, a lost machine) leaves its message unacknowledged in Redis,
and a worker re-queues it once it is older than the visibility timeout (kombu checks when a
worker starts, then about every 100 s). Either way the task runs again from the start. That
is safe because the flows are idempotent: a document whose bytes (sha256) are already indexed
ends ``unchanged`` without being embedded again, a document caught half-way is replaced
atomically, and deleting twice is harmless. The visibility timeout
(``INGESTFLOW_CELERY_VISIBILITY_TIMEOUT``, 3 h by default) must exceed the longest job, or a
job still running is handed to a second worker as well.

Configuration is read from ``ingestflow.core.settings`` (``REDIS_URL``) when the app is first
configured, not at import, and is added as Celery *defaults*: a user's own
``app.conf.update(...)`` or ``config_from_object`` still wins. The Redis URL is a secret and is
never logged (Celery's banner masks its password).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from celery import Celery, Task, signals
from celery.exceptions import Ignore
from kombu import Queue

from deployments.prefect_server import use_running_server
from deployments.queue import JobRequest
from deployments.submit import record_jobs
from ingestflow.core.settings import get_settings
from ingestflow.core.types import JobKind

log = logging.getLogger(__name__)
INGEST_TASK = "ingestflow.ingest"
INGEST_PARTS_TASK = "ingestflow.ingest_parts"
DELETE_TASK = "ingestflow.delete"
TASKS = {JobKind.INGEST: INGEST_TASK, JobKind.DELETE: DELETE_TASK}
PRIORITIES = ("high", "normal", "low")  # the order a worker should consume them in
QUEUES = tuple(f"ingestflow.{p}" for p in PRIORITIES)
DEFAULT_QUEUE = "ingestflow.normal"
RESULT_TTL_SECONDS = 7 * 24 * 3600  # results and job records: how long status() knows a job
PAUSED_QUEUES = "ingestflow:paused_queues"  # a Redis set of the paused queues' names
# A call that cannot reach Redis fails within about this long, so the API answers 503 quickly.
CONNECT_TIMEOUT_SECONDS = 2.0
SOCKET_TIMEOUT_SECONDS = 3.0


def celery_config() -> dict[str, Any]:
    """The app's settings, from ``ingestflow.core.settings`` (``REDIS_URL``,
    ``INGESTFLOW_CELERY_*``)."""
    settings = get_settings()
    url = settings.queue.redis_url.get_secret_value()
    return {
        "broker_url": url,
        "result_backend": url,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,  # a long job never holds a second one hostage
        "task_track_started": True,
        "result_extended": True,  # results carry the task name, kwargs and queue
        "result_expires": RESULT_TTL_SECONDS,
        "task_queues": [Queue(name, routing_key=name) for name in QUEUES],
        "task_default_queue": DEFAULT_QUEUE,
        "task_create_missing_queues": False,
        "broker_connection_retry_on_startup": True,  # a worker waits for Redis to come up
        "broker_connection_timeout": CONNECT_TIMEOUT_SECONDS,
        "broker_transport_options": {
            "visibility_timeout": settings.celery.visibility_timeout,
            "queue_order_strategy": "priority",
            "socket_connect_timeout": CONNECT_TIMEOUT_SECONDS,
            "socket_timeout": SOCKET_TIMEOUT_SECONDS,
        },
        # Publishing retries briefly (a pooled connection may be stale after a Redis
        # restart), then gives up: about a second, not Celery's open-ended reconnects.
        "task_publish_retry_policy": {
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.25,
            "interval_max": 0.5,
        },
        "redis_socket_connect_timeout": CONNECT_TIMEOUT_SECONDS,
        "redis_socket_timeout": SOCKET_TIMEOUT_SECONDS,
        # The result backend retries a lost connection 20 times, a second apart, by default:
        # a cancel or a submit would hang for 20 s or more. Bounded here to about 1.5 s; a
        # worker storing a result retries for longer (see _results_outlast_redis_restarts).
        "result_backend_transport_options": {
            "retry_policy": {
                "max_retries": 3,
                "interval_start": 0,
                "interval_step": 0.5,
                "interval_max": 1,
            },
        },
    }


def create_app(*, set_as_current: bool = True) -> Celery:
    """A Celery app configured from the settings when first used (a new app reads the
    environment again; tests use that to point one at another Redis)."""
    celery = Celery("ingestflow", set_as_current=set_as_current)
    celery.add_defaults(celery_config)  # evaluated lazily, on first configuration
    return celery


app = create_app()


# Job records -------------------------------------------------------------------------------
# A submitted job that no worker has started yet is PENDING in Celery, exactly like an id
# Celery never saw. The backend therefore writes a small hash per job at submission (kind,
# tenant, collection, priority, created_at); the worker adds started_at, and cancel() sets
# cancelled. It expires with the result.


def job_key(job_id: str) -> str:
    """The Redis key of a job's record."""
    return f"ingestflow:job:{job_id}"


def utc_now() -> str:
    return datetime.now(UTC).isoformat()


def _begin(task: Task, request: JobRequest) -> None:
    """Record the start; skip a job that was cancelled while this worker did not listen
    (a revoke is broadcast to the workers running at the time and kept only in memory).
    A task sent without a job record (plain ``ingest.delay()``) gets one."""
    job_id = task.request.id
    sizes = dict((job, len(sources)) for job, sources in request.jobs)
    everything = len(request.sources or request.document_ids)
    record_jobs(
        request, {each: sizes.get(each, everything) for each in request.job_ids}, "celery", job_id
    )
    client = task.backend.client
    if client.hget(job_key(job_id), "cancelled"):
        # task_track_started has just stored STARTED over the REVOKED that cancel() wrote.
        task.backend.mark_as_revoked(job_id, "cancelled", request=task.request)
        raise Ignore()
    pipe = client.pipeline()
    pipe.hset(job_key(job_id), "started_at", utc_now())
    pipe.expire(job_key(job_id), RESULT_TTL_SECONDS)
    pipe.execute()


# Tasks -------------------------------------------------------------------------------------


@app.task(name=INGEST_TASK, bind=True)
def ingest(
    self: Task,
    sources: list[str],
    collection: str = "default",
    tenant: str = "default",
    force: bool = False,
    jobs: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    """Ingest ``sources`` into ``collection`` of ``tenant`` through ``flows.ingest_batch``.

    Returns a JSON summary: document counts by status, the flow run id, and the failures
    as ``{"source", "error"}``. ``jobs`` are the jobs this task does, each with its sources
    (several when submissions were coalesced); without it the job is this task's id (a
    task sent with plain ``ingest.delay()`` gets a job record then).
    """
    members = tuple((job, tuple(names)) for job, names in (jobs or {}).items())
    request = JobRequest.ingest(
        sources=sources,
        collection=collection,
        tenant=tenant,
        force=force,
        job_id=members[0][0] if members else self.request.id,
        jobs=members,
    )
    _begin(self, request)
    import flows  # Prefect is imported in the worker's child, after fork

    queue = (self.request.delivery_info or {}).get("routing_key") or DEFAULT_QUEUE
    with flows.helped_by(lambda run_id, count: _ask_for_helpers(run_id, count, queue)):
        state = flows.ingest_batch(**request.flow_parameters(), return_state=True)
    result = state.result()
    return ingest_summary(result, tenant=tenant, flow_run_id=_flow_run_id(state))


def _ask_for_helpers(run_id: str, count: int, queue: str) -> Callable[[], None]:
    """``count`` helper tasks for a large job split into parts, on the job's own queue;
    withdrawing revokes those no worker has taken yet (one that has finds nothing to do)."""
    sent = [ingest_parts.apply_async(kwargs={"run_id": run_id}, queue=queue) for _ in range(count)]
    return lambda: app.control.revoke([result.id for result in sent])


@app.task(name=INGEST_PARTS_TASK)
def ingest_parts(run_id: str) -> int:
    """Help a large ingest job split into parts (``flows.fan_out``): take its parts until none
    is left; returns how many this task did."""
    from flows import ingest_parts as help_run

    return int(help_run(run_id=run_id))


@app.task(name=DELETE_TASK, bind=True)
def delete(
    self: Task,
    document_ids: list[str],
    collection: str = "default",
    tenant: str = "default",
    job_id: str | None = None,
) -> dict[str, Any]:
    """Delete documents of ``collection`` of ``tenant`` through ``flows.delete_documents``."""
    request = JobRequest.delete(
        document_ids=document_ids,
        collection=collection,
        tenant=tenant,
        job_id=job_id or self.request.id,
    )
    _begin(self, request)
    from flows import delete_documents

    state = delete_documents(**request.flow_parameters(), return_state=True)
    result = state.result()
    return {
        "kind": "delete",
        "collection": collection,
        "tenant": tenant,
        "flow_run_id": _flow_run_id(state),
        "deleted": list(result.deleted),
        "missing": list(result.missing),
        "failures": [{"document_id": d, "error": e} for d, e in result.errors.items()],
    }


def ingest_summary(result: Any, *, tenant: str, flow_run_id: str | None) -> dict[str, Any]:
    """An ``IngestResult`` as JSON: counts by status, failures with their reasons."""
    counts: dict[str, int] = {}
    for outcome in result.outcomes:
        counts[str(outcome.status)] = counts.get(str(outcome.status), 0) + 1
    return {
        "kind": "ingest",
        "collection": result.collection,
        "tenant": tenant,
        "flow_run_id": flow_run_id or _str_or_none(result.flow_run_id),
        "documents": len(result.outcomes),
        "counts": counts,
        "failures": [
            {"source": o.source_uri, "error": o.error}
            for o in result.outcomes
            if str(o.status) == "failed"
        ],
    }


def _flow_run_id(state: Any) -> str | None:
    return _str_or_none(getattr(state.state_details, "flow_run_id", None))


def _str_or_none(value: uuid.UUID | str | None) -> str | None:
    return str(value) if value else None


# A worker retries storing a result this many times, with exponential backoff (full jitter)
# capped at 10 s: about a minute in all.
WORKER_RESULT_RETRIES = 20


@signals.worker_init.connect
def _results_outlast_redis_restarts(sender: Any = None, **_: Mapping[str, Any]) -> None:
    # A job that finishes while Redis restarts must still record its result: with the short
    # policy above, the store failed and the job read "running" until the visibility timeout
    # re-ran it (3 h by default). Celery's own retry loop covers the whole store (it reads the
    # current state first, outside the transport's retry policy). Workers only: front doors
    # must fail fast. Runs in the main process before any result backend exists; the pool's
    # children fork later and build theirs from this configuration.
    celery = getattr(sender, "app", None) or app
    celery.conf.result_backend_always_retry = True
    celery.conf.result_backend_max_retries = WORKER_RESULT_RETRIES


def paused_workers_key(queue: str) -> str:
    """The Redis set of the workers a pause of ``queue`` stopped, to restart on resume."""
    return f"{PAUSED_QUEUES}:{queue}"


@signals.worker_ready.connect
def _leave_paused_queues_alone(sender: Any = None, **_: Mapping[str, Any]) -> None:
    # A worker starting while a queue is paused stops consuming it at once, and is noted so
    # that resuming the queue restarts it.
    consumer = sender
    if consumer is None:
        return
    try:
        client = consumer.app.backend.client
        paused = {m.decode() if isinstance(m, bytes) else m for m in client.smembers(PAUSED_QUEUES)}
        mine = {q.name for q in consumer.app.amqp.queues.consume_from.values()}
        for queue in sorted(paused & mine):
            consumer.cancel_task_queue(queue)
            client.sadd(paused_workers_key(queue), consumer.hostname)
            log.warning("queue %s is paused: not consuming it until it is resumed", queue)
    except Exception as exc:  # noqa: BLE001 - a worker must start even if Redis hiccups
        log.warning("could not read the paused queues (%s)", type(exc).__name__)


@signals.worker_init.connect
def _use_running_prefect_server(**_: Mapping[str, Any]) -> None:
    # In the worker's main process, before it forks its children: they inherit the chosen
    # PREFECT_API_URL, so no task starts Prefect's ephemeral server (20-30 s each).
    use_running_server()


@signals.worker_process_init.connect
def _warm_up_child(**_: Mapping[str, Any]) -> None:
    # Each pool child imports the flows and readies what a first task would load (the
    # schema check, a connection, the embedder's client, a parser process) in the
    # background: Celery gives a new child only a few seconds to report that it is alive.
    def warm() -> None:
        import flows  # noqa: F401 - Prefect is imported in the child, after fork
        from tasks.warm import warm_up

        warm_up()

    threading.Thread(target=warm, name="warm-up", daemon=True).start()
