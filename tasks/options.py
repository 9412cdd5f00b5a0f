"""How every stage task is wrapped: retries with backoff and jitter, timeouts, the
count of each run (its outcome and duration, for ``/metrics``) and its trace span.

Permanent errors (bad input, bad configuration) are never retried.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from prefect import Task, task

from ingestflow.core.errors import is_permanent
from ingestflow.core.telemetry import span
from tasks.jobs import job_attribute, stage_ran, stage_started
from tasks.work import DocWork, StageContext

RETRIES = 3


def _retry_unless_permanent(task: Any, task_run: Any, state: Any) -> bool:
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - the state's own exception, re-raised here
        return not is_permanent(exc)
    return True


def stage_options(stage: str, *, timeout_seconds: float) -> dict[str, Any]:
    """Keyword arguments for ``@task`` shared by every stage."""
    from prefect.cache_policies import NO_CACHE
    from prefect.tasks import exponential_backoff

    return {
        "name": stage,
        "retries": RETRIES,
        "retry_delay_seconds": exponential_backoff(backoff_factor=2),
        "retry_jitter_factor": 0.5,
        "retry_condition_fn": _retry_unless_permanent,
        "timeout_seconds": timeout_seconds,
        # No tags: Prefect asks the server for the concurrency slots of a tagged task run's
        # tags before every run, about 80 ms each here, concurrency limits or not. The task
        # run's name is its stage, and the flow run carries the tags.
        # Inputs are large (documents, vectors) and results are cheap to recompute; caching
        # them would cost more than it saves. Vectors have their own cache in Postgres.
        "cache_policy": NO_CACHE,
        "log_prints": False,
    }


def final_attempt() -> bool:
    """True when the current task run will not be retried again (or runs outside Prefect)."""
    from prefect.runtime import task_run

    count = task_run.run_count
    return not count or count > RETRIES


class PlainStage(Protocol):
    def __call__(
        self, works: list[DocWork], ctx: StageContext, /, *, final_attempt: bool = True
    ) -> list[DocWork]: ...


def stage_task(
    stage: str, *, timeout_seconds: float
) -> Callable[[PlainStage], Task[[list[DocWork], StageContext], list[DocWork]]]:
    """A plain stage function as its Prefect task: ``task(works, ctx)`` runs it, told whether
    this is the final attempt, and records the run as ``succeeded``, ``retried`` (a transient
    error the task will retry) or ``failed``."""

    def wrap(fn: PlainStage) -> Task[[list[DocWork], StageContext], list[DocWork]]:
        def run(works: list[DocWork], ctx: StageContext) -> list[DocWork]:
            last = final_attempt()
            stage_started(ctx.tenant, stage)
            with span(
                f"ingestflow.stage.{stage}",
                **{
                    "ingestflow.stage.name": stage,
                    "ingestflow.tenant": ctx.tenant,
                    "ingestflow.job.id": job_attribute(ctx.job_ids),
                    "ingestflow.documents": len(works),
                },
            ) as current:
                started = time.perf_counter()
                try:
                    done = fn(works, ctx, final_attempt=last)
                except Exception:
                    outcome = "failed" if last else "retried"
                    current.set_attribute("ingestflow.stage.outcome", outcome)
                    stage_ran(ctx.tenant, stage, outcome, time.perf_counter() - started)
                    raise
                current.set_attribute("ingestflow.stage.outcome", "succeeded")
                stage_ran(ctx.tenant, stage, "succeeded", time.perf_counter() - started)
                return done

        # Named as the plain function, but with its own signature: Prefect binds a task's
        # parameters by the signature, which must not grow ``final_attempt``.
        run.__name__ = run.__qualname__ = getattr(fn, "__name__", stage)
        run.__doc__ = fn.__doc__
        return task(**stage_options(stage, timeout_seconds=timeout_seconds))(run)

    return wrap
