"""How every stage task is wrapped: retries with backoff and jitter, timeouts, tags.

Permanent errors (bad input, bad configuration) are never retried.
"""

from __future__ import annotations

from typing import Any

from ingestflow.core.errors import is_permanent

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
        "tags": ["ingestflow", f"stage:{stage}"],
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
