"""A test-only shim for the Prefect test harness's SQLite database.

Every task run asks the server for slots on its tags' concurrency limits. Prefect caches a
"no limits for these tags" answer for only 5 seconds, and on the harness's SQLite database the
ask often fails with ``database is locked`` (the server answers 503 and the client waits about
2 s before retrying). With seven stage tasks per micro-batch that is ~14 s of waiting per
micro-batch, which swamps what these tests measure.

``remember_no_tag_limits`` keeps Prefect's own cached answer (still obtained from the server)
for an hour instead. It changes nothing these tests check: the test server has no concurrency
limits. Running the harness on Postgres would make it unnecessary.
"""

from __future__ import annotations

import cachetools

_TTL_SECONDS = 3600.0


def long_lived_cache() -> cachetools.TTLCache:
    return cachetools.TTLCache(maxsize=1000, ttl=_TTL_SECONDS)


def remember_no_tag_limits() -> None:
    """For a whole process (the crash worker): cache "no tag limits" answers for an hour."""
    import prefect.concurrency.services as services

    services._no_limits_cache = long_lived_cache()
