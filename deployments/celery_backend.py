"""The Celery queue backend: a job is one task of ``deployments.celery_app`` on Redis.

Submitting writes the job's record (kind, tenant, collection, priority, created_at) to a
small Redis hash *before* publishing the task, then publishes with the job id as the task id.
The record is what tells a queued job from an id nobody submitted: Celery reports both as
PENDING. (Storing a fake PENDING result instead would be overwritten by the worker and could
not carry the tenant.) A task sent with plain ``ingest.delay()`` has no record, and is known
from its result once a worker has started it.

Celery states map to job states: PENDING (with a record) -> queued; RECEIVED, STARTED,
RETRY -> running; SUCCESS -> completed; FAILURE, REJECTED -> failed; REVOKED -> cancelled.

Every Redis call runs with short socket timeouts and bounded publish retries (see
``celery_app.celery_config``); a connection failure leaves as ``BackendUnavailableError``,
which never names the URL. This module (and Celery with it) is imported only where the
``celery`` backend is chosen: the registry loads it by its entry point.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from deployments.celery_app import (
    PAUSED_QUEUES,
    PRIORITIES,
    QUEUES,
    RESULT_TTL_SECONDS,
    TASKS,
    app,
    job_key,
    paused_workers_key,
    utc_now,
)
from deployments.queue import FLOW_PARAMETERS, JobInfo, JobRequest, QueueInfo, WorkerInfo
from ingestflow.core.errors import BackendUnavailableError, QueueNotFoundError
from ingestflow.core.types import JobKind, JobState, Priority

if TYPE_CHECKING:
    from celery import Celery

UNREACHABLE = "the Celery broker (Redis) is unreachable"
_MESSAGE_LIMIT = 500
# How long a broadcast to the workers waits for their replies when it does not know how
# many will answer; once the answering workers are known, it returns when they have.
INSPECT_TIMEOUT_SECONDS = 1.0

_STATE_BY_CELERY = {
    "PENDING": JobState.QUEUED,
    "RECEIVED": JobState.RUNNING,
    "STARTED": JobState.RUNNING,
    "RETRY": JobState.RUNNING,
    "SUCCESS": JobState.COMPLETED,
    "FAILURE": JobState.FAILED,
    "REJECTED": JobState.FAILED,
    "REVOKED": JobState.CANCELLED,
}


def celery_backend() -> CeleryBackend:
    """The backend on the shared app of ``deployments.celery_app`` (one connection pool)."""
    return CeleryBackend(app)


class CeleryBackend:
    """Jobs as Celery tasks on Redis (see the module docstring)."""

    name = "celery"

    def __init__(self, app: Celery) -> None:
        import kombu.exceptions
        import redis.exceptions

        self.app = app
        # What a broker or result-backend call raises when Redis is down or unreachable.
        self._unreachable: tuple[type[BaseException], ...] = (
            kombu.exceptions.OperationalError,
            redis.exceptions.ConnectionError,
            redis.exceptions.TimeoutError,
            redis.exceptions.InvalidResponse,  # something else answers on that port
            OSError,
        )

    def submit(self, request: JobRequest) -> str:
        """Queue an ``ingestflow.ingest`` or ``ingestflow.delete`` task, with the flow's
        parameters as its keyword arguments, on the request's priority queue."""
        job_id = request.job_id  # the task's id, so the job and its task share one
        priority = Priority(request.priority)
        with self._reachable():
            if request.idempotency_key:
                earlier = self._claim_idempotency_key(request, job_id)
                if earlier is not None:
                    return earlier
            self._write_record(job_id, request, priority)
            try:
                self.app.send_task(
                    TASKS[request.kind],
                    kwargs=request.flow_parameters(),
                    queue=f"ingestflow.{priority.value}",
                    task_id=job_id,
                )
            except self._unreachable:
                self._forget(job_id, request)
                raise
        return job_id

    def status(self, job_ids: Sequence[str]) -> dict[str, JobInfo]:
        """The known jobs among ``job_ids``, read in two round trips."""
        ids = list(dict.fromkeys(str(j) for j in job_ids))
        if not ids:
            return {}
        with self._reachable():
            records = self._records(ids)
            metas = self._metas(ids)
        infos = {i: _job_info(i, records[i], metas[i]) for i in ids}
        return {i: info for i, info in infos.items() if info is not None}

    def cancel(self, job_id: str) -> JobInfo:
        """Revoke the task (SIGTERM to a running one). A queued job is ``cancelled`` at once
        and never starts; a running one is ``cancelling`` until its worker reports. Finished
        and unknown jobs are returned unchanged."""
        info = self.status([job_id]).get(job_id)
        if info is None or info.state.terminal:
            return info or JobInfo(id=job_id, backend=self.name, state=JobState.UNKNOWN)
        with self._reachable():
            self._client().hset(job_key(job_id), "cancelled", "1")
            self.app.control.revoke(job_id, terminate=True, signal="SIGTERM")
            if info.state is JobState.QUEUED:
                # The revoke reaches only the workers listening now; the stored state (and the
                # record the task checks when it starts) make it stick for the others.
                self.app.backend.mark_as_revoked(job_id, "cancelled")
        after = self.status([job_id]).get(job_id, info)
        if after.state is JobState.RUNNING:
            return _replace_state(after, JobState.CANCELLING)
        return after

    def ping(self) -> None:
        """Return if Redis answers PING within about 2 s."""
        with self._reachable():
            self._client().ping()

    def queue_depth(self) -> int:
        """Jobs waiting in the three priority queues (started ones are not in the lists)."""
        return sum(q.depth for q in self.queues())

    def workers(self) -> list[WorkerInfo]:
        """The workers that answer a broadcast within about a second, with the tasks each is
        running (``active``), has taken but not started (``reserved``) and can run
        (``registered``), and the queues it consumes."""
        with self._reachable():
            inspect = self.app.control.inspect(timeout=INSPECT_TIMEOUT_SECONDS)
            names = sorted((inspect.ping() or {}).keys())
            if not names:
                return []
            # Now that they are known, each question returns as soon as all have answered.
            inspect = self.app.control.inspect(
                destination=names, limit=len(names), timeout=INSPECT_TIMEOUT_SECONDS
            )
            active, reserved = inspect.active() or {}, inspect.reserved() or {}
            registered, consuming = inspect.registered() or {}, inspect.active_queues() or {}
        now = datetime.now(UTC)
        return [
            WorkerInfo(
                name=name,
                status="online",
                last_heartbeat=now,  # it answered just now
                queues=tuple(q.get("name", "") for q in consuming.get(name) or ()),
                active=tuple(t.get("id", "") for t in active.get(name) or ()),
                reserved=tuple(t.get("id", "") for t in reserved.get(name) or ()),
                registered=tuple(sorted(registered.get(name) or ())),
            )
            for name in names
        ]

    def queues(self) -> list[QueueInfo]:
        """The priority queues high to low: jobs waiting in each, and whether it is paused."""
        with self._reachable():
            pipe = self._client().pipeline()
            for queue in QUEUES:
                pipe.llen(queue)
            pipe.smembers(PAUSED_QUEUES)
            *depths, paused = pipe.execute()
        paused_names = {_text(m) for m in paused}
        return [
            QueueInfo(name=name, depth=int(depth), paused=queue in paused_names)
            for name, queue, depth in zip(PRIORITIES, QUEUES, depths, strict=True)
        ]

    def pause_queue(self, name: str) -> QueueInfo:
        """The workers consuming the queue stop taking its jobs (their running tasks go on),
        and workers that start while it is paused leave it alone."""
        queue = _queue(name)
        with self._reachable():
            client = self._client()
            client.sadd(PAUSED_QUEUES, queue)  # first: a worker starting now sees it
            consumers = self._consumers(queue)
            if consumers:
                client.sadd(paused_workers_key(queue), *consumers)
                self.app.control.cancel_consumer(
                    queue, destination=consumers, reply=True, timeout=INSPECT_TIMEOUT_SECONDS
                )
        return self._queue_info(name)

    def resume_queue(self, name: str) -> QueueInfo:
        """The workers the pause stopped consume the queue again."""
        queue = _queue(name)
        with self._reachable():
            client = self._client()
            client.srem(PAUSED_QUEUES, queue)
            stopped = sorted(_text(w) for w in client.smembers(paused_workers_key(queue)))
            client.delete(paused_workers_key(queue))
            if stopped:
                self.app.control.add_consumer(
                    queue, destination=stopped, reply=True, timeout=INSPECT_TIMEOUT_SECONDS
                )
        return self._queue_info(name)

    def prune_runs(self, *, before: datetime, limit: int = 1000) -> int:
        """Delete the stored results (and job records) of tasks that ended before
        ``before``. Redis expires them anyway after ``RESULT_TTL_SECONDS``; this is for a
        shorter retention."""
        backend = self.app.backend
        prefix = _text(backend.task_keyprefix)
        deleted = 0
        with self._reachable():
            client = self._client()
            for key in client.scan_iter(match=prefix + "*", count=500):
                raw = client.get(key)
                meta = backend.decode_result(raw) if raw else None
                done = _when(meta.get("date_done")) if isinstance(meta, dict) else None
                if done is None or _aware(done) >= before:
                    continue
                task_id = _text(key).removeprefix(prefix)
                client.delete(key, job_key(task_id))
                deleted += 1
                if deleted >= limit:
                    break
        return deleted

    # internals -----------------------------------------------------------------------------

    def _consumers(self, queue: str) -> list[str]:
        """The workers consuming ``queue`` now."""
        replies = self.app.control.inspect(timeout=INSPECT_TIMEOUT_SECONDS).active_queues() or {}
        return sorted(w for w, qs in replies.items() if any(q.get("name") == queue for q in qs))

    def _queue_info(self, name: str) -> QueueInfo:
        return next(q for q in self.queues() if q.name == name)

    def _write_record(self, job_id: str, request: JobRequest, priority: Priority) -> None:
        record = {
            "kind": request.kind.value,
            "tenant": request.tenant,
            "collection": request.collection,
            "priority": priority.value,
            "created_at": utc_now(),
        }
        pipe = self._client().pipeline()
        pipe.hset(job_key(job_id), mapping=record)
        pipe.expire(job_key(job_id), RESULT_TTL_SECONDS)
        pipe.execute()

    def _claim_idempotency_key(self, request: JobRequest, job_id: str) -> str | None:
        """The job already submitted under the request's key, or None after claiming the key
        for ``job_id``."""
        client = self._client()
        key = _idempotency_key(request)
        if client.set(key, job_id, nx=True, ex=RESULT_TTL_SECONDS):
            return None
        earlier = client.get(key)
        return earlier.decode() if isinstance(earlier, bytes) else earlier

    def _forget(self, job_id: str, request: JobRequest) -> None:
        # The task was never published: drop its record so status() does not report it
        # queued forever. Redis is probably down too; the records then simply expire.
        keys = [job_key(job_id)]
        if request.idempotency_key:
            keys.append(_idempotency_key(request))
        with suppress(*self._unreachable):
            self._client().delete(*keys)

    def _records(self, ids: list[str]) -> dict[str, dict[str, str]]:
        pipe = self._client().pipeline()
        for job_id in ids:
            pipe.hgetall(job_key(job_id))
        return {i: _decoded(r) for i, r in zip(ids, pipe.execute(), strict=True)}

    def _metas(self, ids: list[str]) -> dict[str, dict[str, Any] | None]:
        """Each task's stored result meta (with result_extended: name, kwargs, queue), or None
        when the task has stored nothing yet."""
        backend = self.app.backend
        raw = self._client().mget([backend.get_key_for_task(i) for i in ids])
        return {i: backend.decode_result(v) if v else None for i, v in zip(ids, raw, strict=True)}

    def _client(self) -> Any:
        # The result backend's redis client: the same Redis, its pool and socket timeouts.
        return self.app.backend.client

    @contextmanager
    def _reachable(self) -> Iterator[None]:
        try:
            yield
        except self._unreachable as exc:
            raise BackendUnavailableError(UNREACHABLE) from exc


def _queue(name: str) -> str:
    """The Celery queue of the priority ``name``."""
    if name not in PRIORITIES:
        raise QueueNotFoundError(f"no queue {name!r}; the queues are {', '.join(PRIORITIES)}")
    return QUEUES[PRIORITIES.index(name)]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _idempotency_key(request: JobRequest) -> str:
    return f"ingestflow:idempotency:{request.tenant}:{request.idempotency_key}"


def _decoded(record: dict[Any, Any]) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in record.items()}


def _job_info(job_id: str, record: dict[str, str], meta: dict[str, Any] | None) -> JobInfo | None:
    """The job as its record and result meta describe it; None for an id nobody submitted."""
    if not record and meta is None:
        return None
    meta = meta or {}
    status = str(meta.get("status") or "PENDING")
    kind = _kind(record.get("kind"), meta.get("name"))
    return JobInfo(
        id=job_id,
        backend="celery",
        state=_STATE_BY_CELERY.get(status, JobState.UNKNOWN),
        kind=kind,
        created_at=_when(record.get("created_at")),
        started_at=_when(record.get("started_at")),
        finished_at=_when(meta.get("date_done")),
        flow_run_id=_result_field(meta, "flow_run_id"),
        message=_message(status, meta.get("result")),
        tags=_tags(record, meta, kind),
    )


def _kind(recorded: str | None, task_name: str | None) -> JobKind | None:
    if recorded in (JobKind.INGEST.value, JobKind.DELETE.value):
        return JobKind(recorded)
    return {name: kind for kind, name in TASKS.items()}.get(task_name or "")


def _tags(record: dict[str, str], meta: dict[str, Any], kind: JobKind | None) -> dict[str, str]:
    """tenant, collection, kind and priority: from the record, else from the task's request
    as its extended result stores it (a task sent with plain ``ingest.delay()``)."""
    names = ("tenant", "collection", "kind", "priority")
    tags: dict[str, str] = {k: record[k] for k in names if k in record}
    if kind is None:
        return tags
    tags.setdefault("kind", kind.value)
    params = dict(zip(FLOW_PARAMETERS[kind], meta.get("args") or (), strict=False))
    params.update(meta.get("kwargs") or {})
    for name in ("tenant", "collection"):
        value = params.get(name, "default")  # the tasks' own default
        if isinstance(value, str):
            tags.setdefault(name, value)
    queue = meta.get("queue")
    if isinstance(queue, str) and queue.startswith("ingestflow."):
        tags.setdefault("priority", queue.removeprefix("ingestflow."))
    return tags


def _result_field(meta: dict[str, Any], name: str) -> str | None:
    result = meta.get("result")
    if meta.get("status") == "SUCCESS" and isinstance(result, dict) and result.get(name):
        return str(result[name])
    return None


def _message(status: str, result: Any) -> str | None:
    """The failure's type and reason (never its traceback), or why the job was revoked."""
    if status == "REVOKED":
        return "cancelled"
    if status in ("FAILURE", "REJECTED") and isinstance(result, BaseException):
        return f"{type(result).__name__}: {result}"[:_MESSAGE_LIMIT]
    return None


def _when(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and value:
        with suppress(ValueError):
            return datetime.fromisoformat(value)
    return None


def _aware(when: datetime) -> datetime:
    """Celery writes ``date_done`` in UTC, without a zone when ``enable_utc`` is on."""
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _replace_state(info: JobInfo, state: JobState) -> JobInfo:
    from dataclasses import replace

    return replace(info, state=state)
