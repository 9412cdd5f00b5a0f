"""Fan-out: a large run's documents split into parts that any worker of the pool helps with.

A run started by a queue backend (a flow run of a deployment, or a Celery task) over more
than one part's worth of documents (``INGESTFLOW_FAN_OUT_PART_DOCUMENTS``) writes its parts
to Postgres (``storage.fan_out``) and asks the backend for up to
``INGESTFLOW_FAN_OUT_HELPERS`` helper runs (``ingest-parts``: child flow runs of the
deployment on the same queue, or Celery tasks on the same queue). Every helper, and the
parent itself, claims one part at a time until none is left; so a pool with no free worker
never deadlocks (the parent does every part), and each free worker, on any machine that
reaches the database, the stores and the Prefect API, takes a share.

The parent gathers the outcomes in order and ends the job once, as an unsplit run would: its
progress artifact follows the parts done, and a sweep decides its deletions after every part
has ended. The parent also holds the collection's deferred vector index for the whole run.

A worker killed in the middle of a part stops its heartbeat; once the heartbeat is older
than ``INGESTFLOW_FAN_OUT_STALE_SECONDS``, another run (a helper, or the parent) claims the
part again and runs it from the start, which the stages make exact (known bytes end
``unchanged``, a half-written document is replaced whole). A part failing three times fails
the run. Once the run's jobs have ended (cancelled), or its parent has died (its heartbeat
stopped), no part is handed out any more.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast
from uuid import UUID

from prefect import flow
from prefect.runtime import deployment, flow_run

from ingestflow.core.errors import IngestError
from ingestflow.core.settings import Settings, get_settings
from ingestflow.core.types import DocumentOutcome, DocumentStatus
from storage.db import transaction
from storage.fan_out import (
    ClaimedPart,
    FanOutRun,
    PartsState,
    add_part,
    beat,
    claim_part,
    complete_part,
    create_run,
    drop_abandoned,
    drop_run,
    find_run,
    part_outcomes,
    parts_state,
    release_part,
)
from storage.migrate import ensure_schema
from storage.vector_index import DeferredVectorIndex
from tasks.config import ChunkingConfig, PipelineConfig
from tasks.stages import TASK_STAGES, Stage, index_deferral, micro_batches, run_batches
from tasks.work import DocWork, StageContext, describe_error

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun

log = logging.getLogger(__name__)

HELPER_DEPLOYMENT = "ingest-parts/ingest-parts"
WAIT_SECONDS = 0.5  # how often the parent looks at the parts it waits for


class FanOutFailedError(IngestError, code="fan_out_failed"):
    """A part of a fanned-out run failed on every attempt."""


Withdraw = Callable[[], None]


class Helpers(Protocol):
    """Asks the queue backend for ``count`` helper runs of ``ingest-parts`` for ``run_id``;
    returns what withdraws the ones not started yet once the run has ended (or None)."""

    def __call__(self, run_id: str, count: int) -> Withdraw | None: ...


_helpers: ContextVar[Helpers | None] = ContextVar("fan_out_helpers", default=None)


@contextlib.contextmanager
def helped_by(helpers: Helpers) -> Iterator[None]:
    """Runs called in this block ask ``helpers`` for help (the Celery tasks use this)."""
    token = _helpers.set(helpers)
    try:
        yield
    finally:
        _helpers.reset(token)


def helpers_for_this_run() -> Helpers | None:
    """Who can help this run: the backend that started it; None for a run called directly
    (a notebook, the CLI), which no pool serves."""
    chosen = _helpers.get()
    if chosen is not None:
        return chosen
    if deployment.id:
        return prefect_helpers
    return None


def prefect_helpers(run_id: str, count: int) -> Withdraw:
    """Child flow runs of the ``ingest-parts`` deployment, on the parent's work queue and with
    its tags (so a served runner gives them the parent's priority). Withdrawing cancels those
    still scheduled."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    with get_client(sync_client=True) as client:
        parent = client.read_flow_run(UUID(flow_run.id)) if flow_run.id else None
    children = []
    for _ in range(count):
        # Called from a sync flow, Prefect's dual sync/async function returns the flow run.
        child = run_deployment(
            HELPER_DEPLOYMENT,
            parameters={"run_id": run_id},
            timeout=0,
            as_subflow=True,
            tags=list(parent.tags) if parent else None,
            work_queue_name=parent.work_queue_name if parent else None,
        )
        children.append(cast("FlowRun", child).id)

    def withdraw() -> None:
        from prefect.states import Cancelled

        with get_client(sync_client=True) as client:
            for child in children:
                state = client.read_flow_run(child).state
                if state is not None and state.is_scheduled():
                    client.set_flow_run_state(child, Cancelled(message="the run has ended"))

    return withdraw


def should_fan_out(settings: Settings, *, total: int | None, password: str | None) -> bool:
    """A run is split when a backend started it, helpers are allowed, it has more documents
    than one part (a sweep, whose size is not known, always may) and no password (which is
    never written down)."""
    limits = settings.ingest
    if limits.fan_out_helpers <= 0 or password is not None:
        return False
    if total is not None and total <= limits.fan_out_part_documents:
        return False
    return helpers_for_this_run() is not None


@dataclass(frozen=True)
class SourceOutcome:
    """A document's outcome with its source as the run was given it."""

    source: str
    outcome: DocumentOutcome


def fan_out(
    batches: Iterable[list[str]],
    ctx: StageContext,
    *,
    dimension: int,
    settings: Settings,
    metadata: dict[str, Any],
    chunking: ChunkingConfig | None,
    total: int | None,
    stages: Sequence[Stage],
    on_progress: Callable[[int], None],
    at_least: Callable[[], int] = lambda: 0,
) -> list[SourceOutcome]:
    """Split the run into parts, ask for helpers, do parts until none is left, wait for the
    helpers' parts and return every outcome in order (see the module docstring)."""
    limits = settings.ingest
    helpers = helpers_for_this_run()
    assert helpers is not None and ctx.flow_run_id is not None
    run_id = str(ctx.flow_run_id)
    stale = limits.fan_out_stale_seconds
    with transaction() as conn:
        drop_abandoned(conn, older_than_seconds=max(3600.0, 10 * stale))
        create_run(
            conn,
            FanOutRun(
                id=run_id,
                collection_id=ctx.collection_id,
                dimension=dimension,
                tenant=ctx.tenant,
                force=ctx.force,
                metadata=metadata,
                chunking=chunking.model_dump(mode="json") if chunking is not None else None,
                job_ids=ctx.job_ids,
            ),
        )
    withdraw: list[Withdraw] = []
    try:
        with (
            _Heartbeat(stale / 4, lambda: _beat(run_id, [])),
            index_deferral(ctx, dimension=dimension, settings=limits) as deferral,
        ):
            _split(batches, ctx, settings, total, helpers, deferral, withdraw, at_least)
            while True:
                state = _parts(run_id)
                if state.failed:
                    raise FanOutFailedError(f"a part failed on every attempt: {state.error}")
                on_progress(state.documents_done)
                if state.done == state.total:
                    break
                if not _do_one(run_id, ctx, dimension, settings, metadata, stages):
                    time.sleep(WAIT_SECONDS)
            with transaction() as conn:
                rows = part_outcomes(conn, run_id=run_id)
    finally:
        with transaction() as conn:
            drop_run(conn, run_id=run_id)
        for each in withdraw:
            _withdraw(each)
    return [_outcome_of(row) for row in rows]


def _split(
    batches: Iterable[list[str]],
    ctx: StageContext,
    settings: Settings,
    total: int | None,
    helpers: Helpers,
    deferral: DeferredVectorIndex,
    withdraw: list[Withdraw],
    at_least: Callable[[], int],
) -> None:
    """The parts, written as the batches arrive; helpers are asked for once there are two
    (what withdraws them is added to ``withdraw``)."""
    size = settings.ingest.fan_out_part_documents
    wanted = settings.ingest.fan_out_helpers
    if total is not None:
        wanted = min(wanted, math.ceil(total / size) - 1)
    parts, seen = 0, 0
    pending: list[str] = []

    def add(sources: list[str]) -> None:
        nonlocal parts
        with transaction() as conn:
            add_part(
                conn,
                run_id=str(ctx.flow_run_id),
                part=parts,
                sources=[(s, ctx.jobs.get(s)) for s in sources],
            )
        parts += 1
        if parts == 2 and wanted > 0:
            withdraw.extend(_ask(helpers, str(ctx.flow_run_id), wanted))

    for batch in batches:
        seen += len(batch)
        deferral.before_batch(max(total or 0, seen, at_least()))
        pending.extend(batch)
        while len(pending) >= size:
            add(pending[:size])
            pending = pending[size:]
    if pending:
        add(pending)


def _ask(helpers: Helpers, run_id: str, count: int) -> list[Withdraw]:
    """Ask for helpers; if the backend cannot be asked (no ``ingest-parts`` deployment, the
    broker down), the run does its parts alone."""
    try:
        withdraw = helpers(run_id, count)
    except Exception as exc:  # noqa: BLE001 - helpers speed a run up; it never needs them
        # The type only: a broker's error may carry its URL, and with it a password.
        log.warning(
            "could not ask for helpers (%s); this run does every part itself",
            type(exc).__name__,
        )
        return []
    return [withdraw] if withdraw is not None else []


def _withdraw(withdraw: Withdraw) -> None:
    """Helpers not started yet are withdrawn (they would find nothing left to do)."""
    try:
        withdraw()
    except Exception as exc:  # noqa: BLE001 - a helper left behind only finds nothing to do
        log.info("could not withdraw the helpers not started (%s)", type(exc).__name__)


def _do_one(
    run_id: str,
    ctx: StageContext,
    dimension: int,
    settings: Settings,
    metadata: dict[str, Any],
    stages: Sequence[Stage],
) -> bool:
    """Claim one part and run it; False when there was none to claim."""
    with transaction() as conn:
        part = claim_part(
            conn,
            run_id=run_id,
            claimed_by=str(ctx.flow_run_id) if ctx.flow_run_id else None,
            stale_seconds=settings.ingest.fan_out_stale_seconds,
        )
    if part is None:
        return False
    run_part(part, ctx, dimension=dimension, settings=settings, metadata=metadata, stages=stages)
    return True


def run_part(
    part: ClaimedPart,
    ctx: StageContext,
    *,
    dimension: int,
    settings: Settings,
    metadata: dict[str, Any],
    stages: Sequence[Stage],
) -> None:
    """One claimed part through the stages, its outcomes stored. A failure releases the part
    for another attempt (it is logged here); a cancellation leaves it to go stale."""
    limits = settings.ingest
    part_ctx = replace(ctx, jobs={s: job for s, job in part.sources if job})
    finished: list[DocWork] = []
    # Parts never drop the index themselves: the parent holds the deferral for the whole run.
    no_deferral = limits.model_copy(update={"bulk_index_min_documents": 0})
    try:
        with _Heartbeat(limits.fan_out_stale_seconds / 4, lambda: _beat(part.run_id, [part.claim])):
            run_batches(
                micro_batches([s for s, _ in part.sources], limits.batch_size),
                part_ctx,
                dimension=dimension,
                settings=no_deferral,
                metadata=metadata,
                stages=stages,
                on_batch=finished.extend,
            )
    except Exception as exc:  # noqa: BLE001 - the part is released for another attempt
        reason = describe_error(exc)
        log.warning(
            "part %d of run %s failed (attempt %d): %s",
            part.part,
            part.run_id,
            part.attempts,
            reason,
        )
        with transaction() as conn:
            release_part(conn, part=part, error=reason)
        return
    rows = [_row_of(w) for w in finished]
    with transaction() as conn:
        if not complete_part(conn, part=part, outcomes=rows):
            log.warning(
                "part %d of run %s was claimed again meanwhile; its outcomes stand",
                part.part,
                part.run_id,
            )


@flow(name="ingest-parts", flow_run_name="help {run_id}", log_prints=False)
def ingest_parts(run_id: str) -> int:
    """Help a fanned-out run: claim its parts one at a time until none is left; returns how
    many this run did. A run that has ended (or never split) leaves nothing to claim."""
    import tempfile

    ensure_schema()
    with transaction() as conn:
        run = find_run(conn, run_id=run_id)
    if run is None:
        return 0
    settings = get_settings()
    chunking = ChunkingConfig.model_validate(run.chunking) if run.chunking is not None else None
    config = PipelineConfig.from_settings(settings, chunking=chunking)
    done = 0
    with tempfile.TemporaryDirectory(prefix="ingestflow-") as tmp:
        ctx = StageContext(
            run.collection_id,
            config,
            Path(tmp),
            settings.ingest,
            run.force,
            flow_run.id,
            {},
            run.tenant,
        )
        while _do_one(run_id, ctx, run.dimension, settings, run.metadata, TASK_STAGES):
            done += 1
    return done


def _parts(run_id: str) -> PartsState:
    with transaction() as conn:
        return parts_state(conn, run_id=run_id)


def _beat(run_id: str, claims: list[str]) -> None:
    with transaction() as conn:
        beat(conn, run_id=run_id, claims=claims)


def _row_of(work: DocWork) -> dict[str, Any]:
    outcome = work.outcome()
    return {"source": work.source, **asdict(outcome), "status": outcome.status.value}


def _outcome_of(row: dict[str, Any]) -> SourceOutcome:
    fields = {k: v for k, v in row.items() if k != "source"}
    fields["status"] = DocumentStatus(fields["status"])
    return SourceOutcome(row["source"], DocumentOutcome(**fields))


class _Heartbeat:
    """Calls ``beat`` every ``interval`` seconds in a daemon thread while the block runs; a
    failed beat is logged and the next one tried."""

    def __init__(self, interval: float, beat: Callable[[], None]) -> None:
        self.interval = max(interval, 0.05)
        self.beat = beat
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except Exception as exc:  # noqa: BLE001 - the next beat tries again
                log.warning("heartbeat failed: %s", type(exc).__name__)
