"""The served runner's order of runs (pure logic), and the Prefect internals it relies on,
pinned so that a Prefect upgrade that moves them fails here rather than in production."""

from __future__ import annotations

import inspect
from types import SimpleNamespace

from deployments.priority_runner import PriorityRunner, PriorityRunPoller, by_queue
from deployments.work_pool import queue_of


def run(name: str, *tags: str) -> SimpleNamespace:
    return SimpleNamespace(name=name, tags=list(tags))


def test_a_run_belongs_to_the_queue_its_priority_tag_names():
    assert queue_of(["ingestflow", "priority:high"]) == "high"
    assert queue_of(["priority:low", "kind:ingest"]) == "low"
    assert queue_of(["ingestflow"]) == "normal"  # a scheduled sweep or re-queue
    assert queue_of(["priority:urgent"]) == "normal"  # not a queue
    assert queue_of(["xpriority:high"]) == "normal"


def test_runs_are_offered_high_first_and_keep_their_order_within_a_queue():
    runs = [
        run("l1", "priority:low"),
        run("n1"),
        run("h1", "priority:high"),
        run("l2", "priority:low"),
    ]
    lanes = by_queue(runs, paused=set())
    assert [[r.name for r in lane] for lane in lanes] == [["h1"], ["n1"], ["l1", "l2"]]


def test_a_paused_queue_offers_nothing():
    runs = [run("l1", "priority:low"), run("h1", "priority:high")]
    assert [[r.name for r in lane] for lane in by_queue(runs, paused={"high"})] == [["l1"]]
    assert by_queue(runs, paused={"high", "low"}) == []


def test_the_prefect_internals_the_runner_relies_on_are_there():
    from prefect.runner import Runner
    from prefect.runner._scheduled_run_poller import ScheduledRunPoller

    # The method overridden, with the signature the override calls it with.
    params = list(inspect.signature(ScheduledRunPoller._submit_scheduled_flow_runs).parameters)
    assert params == ["self", "flow_run_response", "task_group"]
    # The poller is built in __aenter__ and kept as _scheduled_run_poller.
    assert "_scheduled_run_poller = ScheduledRunPoller(" in inspect.getsource(Runner.__aenter__)
    assert "_client" in inspect.getsource(ScheduledRunPoller.__init__)
    assert issubclass(PriorityRunner, Runner) and issubclass(PriorityRunPoller, ScheduledRunPoller)
