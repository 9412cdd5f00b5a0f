"""The Prefect queue backend: a job is a flow run of the ``ingest-batch`` or
``delete-documents`` deployment, created on the Prefect server and run by whatever serves the
deployments (``serve()`` or a worker on the ``ingestflow-process`` pool).

The API calls this from its threadpool, so everything here is synchronous and fails fast:
each call opens its own ``SyncPrefectClient`` with short timeouts, no connection retries and
at most ``_MAX_RETRIES`` retries of a 503 (Prefect's defaults, 3 connection retries and 5
request retries with exponential backoff, hold a request for about a minute when the server is
down). Prefect is imported inside the functions: the API and the CLI import this module.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from deployments.prefect_server import api_url
from deployments.queue import JobInfo, JobRequest, QueueInfo, WorkerInfo
from deployments.work_pool import PRIORITY_TAG, QUEUE_ORDER, WORK_POOL, queue_name, read_queues
from ingestflow.core.errors import BackendUnavailableError, QueueNotFoundError
from ingestflow.core.types import JobKind, JobState

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.objects import FlowRun

DEPLOYMENTS = {
    JobKind.INGEST: "ingest-batch/ingest-batch",
    JobKind.DELETE: "delete-documents/delete-documents",
}
_DEPLOYMENT_NAMES = ["ingest-batch", "delete-documents", "ingest-document", "ingest-parts"]
# Every deployment of ours, the scheduled ones too: their old runs are pruned alike.
_ALL_DEPLOYMENTS = [*_DEPLOYMENT_NAMES, "requeue-documents", "sweep-bucket"]
_KIND_BY_FLOW = {"ingest-batch": JobKind.INGEST, "delete-documents": JobKind.DELETE}
_CONNECT_TIMEOUT = 2.0
_REQUEST_TIMEOUT = 10.0
_PING_TIMEOUT = 2.0
# Two retries of a 503 ride out SQLite's "database is locked" (about 2 s, then 4 s).
_MAX_RETRIES = 2
_PAGE = 200

_STATE_BY_TYPE = {
    "SCHEDULED": JobState.QUEUED,
    "PENDING": JobState.QUEUED,
    "PAUSED": JobState.QUEUED,
    "RUNNING": JobState.RUNNING,  # Prefect's "Retrying" is a RUNNING-type state
    "COMPLETED": JobState.COMPLETED,
    "FAILED": JobState.FAILED,
    "CRASHED": JobState.FAILED,
    "CANCELLING": JobState.CANCELLING,
    "CANCELLED": JobState.CANCELLED,
}


class PrefectBackend:
    """Jobs as flow runs of the Prefect deployments (see the module docstring)."""

    name = "prefect"
    runs_are_flow_runs = True  # a job's run id is its Prefect flow run's id

    def submit(self, request: JobRequest) -> str:
        """Create a flow run of the kind's deployment (``ingest-batch`` or
        ``delete-documents``) with the request's parameters; returns its id."""
        from prefect.exceptions import ObjectNotFound
        from prefect.states import Scheduled

        name = DEPLOYMENTS[request.kind]
        tags = [
            "ingestflow",
            f"tenant:{request.tenant}",
            f"collection:{request.collection}",
            f"kind:{request.kind.value}",
            f"{PRIORITY_TAG}{request.priority.value}",
        ]
        with _client() as client:
            try:
                deployment = client.read_deployment_by_name(name)
            except ObjectNotFound:
                raise BackendUnavailableError(
                    f"the Prefect deployment {name!r} does not exist yet;"
                    " start `ingestflow up` or serve the deployments"
                ) from None
            # What prefect.deployments.run_deployment(..., timeout=0) does in a sync context,
            # on this module's fail-fast client (run_deployment builds its own, with
            # Prefect's long default retries). Served deployments have no work pool: the
            # served runner reads the priority from the tags.
            run = client.create_flow_run_from_deployment(
                deployment.id,
                parameters=request.flow_parameters(),
                state=Scheduled(),
                tags=tags,
                idempotency_key=request.idempotency_key,
                work_queue_name=(
                    queue_name(request.priority) if deployment.work_pool_name else None
                ),
            )
        return str(run.id)

    def status(self, job_ids: Sequence[str]) -> dict[str, JobInfo]:
        """The flow runs among ``job_ids`` that exist, read in one request per 200 ids."""
        ids = _uuids(job_ids)
        if not ids:
            return {}
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
        from prefect.client.schemas.sorting import FlowRunSort

        runs: list[FlowRun] = []
        with _client() as client:
            # The server answers at most 200 runs a request.
            for start in range(0, len(ids), _PAGE):
                page = ids[start : start + _PAGE]
                runs += client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=page)),
                    sort=FlowRunSort.ID_DESC,  # the server rejects an unsorted filter
                    limit=len(page),
                )
            flow_names = _flow_names(client, runs)
        return {str(r.id): _job_info(r, flow_names.get(r.flow_id)) for r in runs}

    def cancel(self, job_id: str) -> JobInfo:
        """Cancel the flow run: a run not started yet is ``Cancelled`` at once; a running one
        goes ``Cancelling`` and its runner or worker kills the process. Finished runs, and ids
        Prefect does not know, are returned unchanged."""
        ids = _uuids([job_id])
        if not ids:
            return JobInfo(id=job_id, backend=self.name, state=JobState.UNKNOWN)
        from prefect.exceptions import ObjectNotFound

        with _client() as client:
            try:
                run = client.read_flow_run(ids[0])
            except ObjectNotFound:
                return JobInfo(id=job_id, backend=self.name, state=JobState.UNKNOWN)
            state = _cancel_state(run)
            if state is not None:
                client.set_flow_run_state(run.id, state)
                run = client.read_flow_run(run.id)
            flow_names = _flow_names(client, [run])
        return _job_info(run, flow_names.get(run.flow_id))

    def ping(self) -> None:
        """Return if the Prefect API answers ``/health`` within about 2 s."""
        with _client(timeout=_PING_TIMEOUT, retries=0) as client:
            failure = client.api_healthcheck()
        if failure is not None:
            raise _unavailable(failure, str(client.api_url))

    def queue_depth(self) -> int:
        """Flow runs of our deployments waiting to start (scheduled for now or earlier, or
        pending); future runs of a sweep schedule do not count."""
        with _client() as client:
            return _count_waiting(client)

    def workers(self) -> list[WorkerInfo]:
        """The ``ingestflow-process`` pool's workers, and the runner serving our deployments
        (``serve``) when there is one: Prefect knows a served runner only by when it last
        polled for runs, which is its heartbeat."""
        from prefect.client.schemas.filters import WorkerFilter
        from prefect.exceptions import ObjectNotFound

        with _client() as client:
            try:
                # Prefect 3.8's sync client sends nulls the server rejects unless all are given.
                pool_workers = client.read_workers_for_work_pool(
                    WORK_POOL, worker_filter=WorkerFilter(), offset=0, limit=200
                )
            except ObjectNotFound:
                pool_workers = []
            served = _served_deployments(client)
        found = [
            WorkerInfo(
                name=w.name,
                status=str(w.status.value).lower(),
                last_heartbeat=w.last_heartbeat_time,
                queues=QUEUE_ORDER,
            )
            for w in pool_workers
        ]
        if served:
            polled = [d.last_polled for d in served if d.last_polled is not None]
            ready = any(str(getattr(d.status, "value", d.status)) == "READY" for d in served)
            found.append(
                WorkerInfo(
                    name="serve",
                    status="online" if ready else "offline",
                    last_heartbeat=max(polled) if polled else None,
                    queues=QUEUE_ORDER,
                    registered=tuple(sorted(d.name for d in served)),
                )
            )
        return found

    def queues(self) -> list[QueueInfo]:
        """The pool's queues high to low, each with the runs waiting in it (by their
        ``priority:`` tag, which both runners go by)."""
        from prefect.exceptions import ObjectNotFound

        with _client() as client:
            try:
                paused = {q.name for q in read_queues(client) if q.is_paused}
            except ObjectNotFound:
                paused = set()
            depths = {name: _count_waiting(client, queue=name) for name in QUEUE_ORDER}
        return [QueueInfo(name, depths[name], name in paused) for name in QUEUE_ORDER]

    def pause_queue(self, name: str) -> QueueInfo:
        """Pause the pool's work queue: neither a worker nor the served runner starts its
        runs until it is resumed."""
        return self._set_paused(name, True)

    def resume_queue(self, name: str) -> QueueInfo:
        return self._set_paused(name, False)

    def prune_runs(self, *, before: datetime, limit: int = 1000) -> int:
        """Delete our deployments' flow runs that ended (completed, failed, crashed or were
        cancelled) before ``before``."""
        from prefect.client.schemas.filters import (
            DeploymentFilter,
            DeploymentFilterName,
            FlowRunFilter,
            FlowRunFilterEndTime,
            FlowRunFilterState,
            FlowRunFilterStateType,
        )
        from prefect.client.schemas.objects import StateType
        from prefect.client.schemas.sorting import FlowRunSort
        from prefect.exceptions import ObjectNotFound

        ended = FlowRunFilter(
            state=FlowRunFilterState(
                type=FlowRunFilterStateType(
                    any_=[
                        StateType.COMPLETED,
                        StateType.FAILED,
                        StateType.CRASHED,
                        StateType.CANCELLED,
                    ]
                )
            ),
            end_time=FlowRunFilterEndTime(before_=before),  # type: ignore[arg-type]
        )
        ours = DeploymentFilter(name=DeploymentFilterName(any_=_ALL_DEPLOYMENTS))
        deleted = 0
        with _client() as client:
            while deleted < limit:
                runs = client.read_flow_runs(
                    flow_run_filter=ended,
                    deployment_filter=ours,
                    sort=FlowRunSort.END_TIME_DESC,
                    limit=min(_PAGE, limit - deleted),
                )
                if not runs:
                    break
                for run in runs:
                    with suppress(ObjectNotFound):  # deleted by someone else meanwhile
                        client.delete_flow_run(run.id)
                    deleted += 1
        return deleted

    def _set_paused(self, name: str, paused: bool) -> QueueInfo:
        from prefect.exceptions import ObjectNotFound

        if name not in QUEUE_ORDER:
            raise QueueNotFoundError(f"no queue {name!r}; the queues are {', '.join(QUEUE_ORDER)}")
        with _client() as client:
            try:
                queue = client.read_work_queue_by_name(name, work_pool_name=WORK_POOL)
            except ObjectNotFound:
                raise QueueNotFoundError(
                    f"the work pool {WORK_POOL!r} has no queue {name!r};"
                    " `ingestflow up` or `ingestflow deploy` creates them"
                ) from None
            client.update_work_queue(queue.id, is_paused=paused)
            depth = _count_waiting(client, queue=name)
        return QueueInfo(name=name, depth=depth, paused=paused)


def _count_waiting(client: SyncPrefectClient, *, queue: str | None = None) -> int:
    """Runs of our deployments waiting to start (scheduled for now or earlier, or pending),
    of one queue's priority or of all."""
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterName,
        FlowRunFilter,
        FlowRunFilterExpectedStartTime,
        FlowRunFilterState,
        FlowRunFilterStateType,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.objects import StateType

    tags = ["ingestflow"] + ([f"{PRIORITY_TAG}{queue}"] if queue else [])
    waiting = FlowRunFilter(
        state=FlowRunFilterState(
            type=FlowRunFilterStateType(any_=[StateType.SCHEDULED, StateType.PENDING])
        ),
        tags=FlowRunFilterTags(all_=tags),
        expected_start_time=FlowRunFilterExpectedStartTime(
            before_=datetime.now(UTC)  # type: ignore[arg-type]  # pydantic takes datetime
        ),
    )
    ours = DeploymentFilter(name=DeploymentFilterName(any_=_DEPLOYMENT_NAMES))
    return int(client.count_flow_runs(flow_run_filter=waiting, deployment_filter=ours))


def _served_deployments(client: SyncPrefectClient) -> list[Any]:
    """Our deployments that no work pool runs: a runner serves them."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.client.schemas.sorting import DeploymentSort

    found = client.read_deployments(
        deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=_DEPLOYMENT_NAMES)),
        limit=50,
        sort=DeploymentSort.NAME_ASC,
    )
    return [d for d in found if not d.work_pool_name]


def _uuids(job_ids: Sequence[str]) -> list[uuid.UUID]:
    found = []
    for job_id in job_ids:
        try:
            found.append(uuid.UUID(str(job_id)))
        except ValueError:
            continue  # not a flow run id: left out, like an id Prefect does not know
    return list(dict.fromkeys(found))


def _cancel_state(run: FlowRun) -> Any:
    """The state to propose to cancel ``run``, or None when it is already final."""
    from prefect.client.schemas.objects import StateType
    from prefect.states import Cancelled, Cancelling

    kind = run.state.type if run.state else None
    if kind in (StateType.SCHEDULED, StateType.PENDING, StateType.PAUSED):
        return Cancelled(message="cancelled before it started")
    if kind == StateType.RUNNING:
        return Cancelling(message="cancellation requested")
    return None


def _job_info(run: FlowRun, flow_name: str | None) -> JobInfo:
    tags = dict(t.split(":", 1) for t in run.tags if ":" in t)
    return JobInfo(
        id=str(run.id),
        backend="prefect",
        state=_job_state(run),
        kind=_kind(tags.get("kind"), flow_name),
        created_at=run.created,
        started_at=run.start_time,
        finished_at=run.end_time,
        flow_run_id=str(run.id),
        message=(run.state.message or None) if run.state else None,
        tags=tags,
    )


def _job_state(run: FlowRun) -> JobState:
    if run.state is None:
        return JobState.UNKNOWN
    if run.state.name == "AwaitingRetry":
        # A SCHEDULED-type state, but the flow's own process is still there, between tries.
        return JobState.RUNNING
    return _STATE_BY_TYPE.get(run.state.type.value, JobState.UNKNOWN)


def _kind(tag: str | None, flow_name: str | None) -> JobKind | None:
    if tag in (JobKind.INGEST.value, JobKind.DELETE.value):
        return JobKind(tag)
    return _KIND_BY_FLOW.get(flow_name or "")


def _flow_names(client: SyncPrefectClient, runs: Sequence[FlowRun]) -> dict[uuid.UUID, str]:
    """Flow names of the runs whose tags do not say their kind (runs not created here)."""
    untagged = {r.flow_id for r in runs if not any(t.startswith("kind:") for t in r.tags)}
    if not untagged:
        return {}
    from prefect.client.schemas.filters import FlowFilter, FlowFilterId

    flows = client.read_flows(flow_filter=FlowFilter(id=FlowFilterId(any_=list(untagged))))
    return {f.id: f.name for f in flows}


@contextmanager
def _client(
    *, timeout: float = _REQUEST_TIMEOUT, retries: int = _MAX_RETRIES
) -> Iterator[SyncPrefectClient]:
    """A fresh sync client with bounded timeouts and retries; transport and HTTP errors
    leave as ``BackendUnavailableError``.

    Fresh, because Prefect's client retries refused connections once it has connected, and
    a down server must fail at once.
    """
    import httpx
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.context import SettingsContext
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_KEY

    url = api_url()
    httpx_settings = {
        "timeout": httpx.Timeout(timeout, connect=min(timeout, _CONNECT_TIMEOUT)),
        # Our own transport: Prefect sets 3 connection retries (1.5 s of backoff) on its own.
        "transport": httpx.HTTPTransport(retries=0, verify=_ssl_context()),
        "verify": _ssl_context(),
    }
    try:
        with (
            SettingsContext(**_bounded_settings(retries)),
            SyncPrefectClient(
                url,
                auth_string=PREFECT_API_AUTH_STRING.value(),
                api_key=PREFECT_API_KEY.value(),
                httpx_settings=httpx_settings,
            ) as client,
        ):
            yield client
    except ObjectNotFound:
        raise
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code < 500 and exc.response.status_code not in (408, 429):
            raise  # a request this module got wrong, not an outage
        raise _unavailable(exc, url) from exc
    except (httpx.HTTPError, OSError) as exc:
        raise _unavailable(exc, url) from exc


def _unavailable(exc: BaseException, url: str) -> BackendUnavailableError:
    """A one-line reason that names the server's host but never its credentials."""
    import httpx

    where = urlsplit(url).netloc.rpartition("@")[2]
    if isinstance(exc, httpx.HTTPStatusError):
        what = f"answered HTTP {exc.response.status_code}"
    elif isinstance(exc, httpx.TimeoutException):
        what = "did not answer in time"
    else:
        what = f"is unreachable ({type(exc).__name__})"
    return BackendUnavailableError(f"the Prefect server at {where} {what}")


@lru_cache(maxsize=4)
def _bounded_settings(retries: int) -> dict[str, Any]:
    """The current Prefect settings with ``retries`` request retries (built once: a copy of
    Prefect's settings costs about 40 ms)."""
    from prefect.context import get_settings_context
    from prefect.settings import PREFECT_CLIENT_MAX_RETRIES

    current = get_settings_context()
    settings = current.settings.copy_with_update(updates={PREFECT_CLIENT_MAX_RETRIES: retries})
    return {"profile": current.profile, "settings": settings}


@lru_cache(maxsize=1)
def _ssl_context() -> Any:
    # Built once: Prefect's client otherwise loads certifi's bundle on every construction.
    import ssl

    import certifi

    return ssl.create_default_context(cafile=certifi.where())
