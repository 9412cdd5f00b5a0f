"""run_batches prepares the next micro-batch (fetch .. chunk) while the current one is
embedded and written, keeps the batches' order, and holds at most two in memory. The stages
here are plain functions that record what ran when (the real ones are tested end to end)."""

from __future__ import annotations

import threading
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import pytest

from ingestflow.core.settings import IngestSettings
from tasks import stages
from tasks.work import DocWork, StageContext

NAMES = ("fetch", "hash", "dedupe", "parse", "chunk", "embed", "upsert")


class _NoIndex(nullcontext):
    def __init__(self, **_: object) -> None:
        super().__init__()

    def before_batch(self, incoming: int) -> None:
        pass


class Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[tuple[str, str]] = []  # (stage, first source of the batch)
        self.in_memory: set[str] = set()
        self.most_in_memory = 0
        self.second_batch_fetched = threading.Event()

    def stage(self, name: str):
        def run(works: list[DocWork], ctx: StageContext) -> list[DocWork]:
            batch = works[0].source
            with self.lock:
                self.events.append((name, batch))
                if name == "fetch":
                    self.in_memory.add(batch)
                    self.most_in_memory = max(self.most_in_memory, len(self.in_memory))
            if name == "fetch" and batch == "b2":
                self.second_batch_fetched.set()
            if name == "embed" and batch == "b1":
                # Only a second thread can fetch the next batch while this one embeds.
                self.overlapped = self.second_batch_fetched.wait(timeout=10)
            if name == "upsert":
                with self.lock:
                    self.in_memory.discard(batch)
            return [replace(w, metadata={**w.metadata, name: True}) for w in works]

        return run


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    monkeypatch.setattr(stages, "DeferredVectorIndex", _NoIndex)
    return Recorder()


def _run(recorder: Recorder, batches: list[list[str]]) -> list[list[DocWork]]:
    finished: list[list[DocWork]] = []
    ctx = StageContext(collection_id=1, config=None, workdir=Path("."))  # type: ignore[arg-type]
    stages.run_batches(
        batches,
        ctx,
        dimension=8,
        settings=IngestSettings(),
        stages=[recorder.stage(n) for n in NAMES],
        on_batch=finished.append,
    )
    return finished


def test_the_next_batch_is_prepared_while_the_current_one_embeds(recorder: Recorder) -> None:
    batches = [[f"b{i}", f"b{i}-x"] for i in range(1, 5)]
    finished = _run(recorder, batches)

    assert recorder.overlapped
    assert [[w.source for w in works] for works in finished] == batches
    assert all(set(w.metadata) == set(NAMES) for works in finished for w in works)
    assert recorder.most_in_memory == 2
    # Within a batch the stages keep their order; writes happen batch after batch.
    for batch in ("b1", "b2", "b3", "b4"):
        assert [s for s, b in recorder.events if b == batch] == list(NAMES)
    assert [b for s, b in recorder.events if s == "upsert"] == ["b1", "b2", "b3", "b4"]


def test_a_failing_preparation_is_raised_and_later_batches_do_not_run(
    recorder: Recorder,
) -> None:
    def failing_parse(works: list[DocWork], ctx: StageContext) -> list[DocWork]:
        if works[0].source == "b2":
            raise RuntimeError("parser crashed")
        return works

    names_and_stages = [recorder.stage(n) for n in NAMES]
    names_and_stages[3] = failing_parse
    ctx = StageContext(collection_id=1, config=None, workdir=Path("."))  # type: ignore[arg-type]
    finished: list[list[DocWork]] = []
    with pytest.raises(RuntimeError, match="parser crashed"):
        stages.run_batches(
            [["b1"], ["b2"], ["b3"], ["b4"]],
            ctx,
            dimension=8,
            settings=IngestSettings(),
            stages=names_and_stages,
            on_batch=finished.append,
        )
    assert [[w.source for w in works] for works in finished] == [["b1"]]
    assert ("fetch", "b3") not in recorder.events  # nothing after the failure was claimed


def test_a_run_stopped_mid_batch_claims_nothing_more(recorder: Recorder) -> None:
    """The current batch fails (or the run is cancelled) while the next is being fetched:
    the run ends at once, and the next batch stops before dedupe claims its documents."""
    release = threading.Event()
    names_and_stages = [recorder.stage(n) for n in NAMES]
    record_hash = names_and_stages[1]

    def slow_hash(works: list[DocWork], ctx: StageContext) -> list[DocWork]:
        if works[0].source == "b2":
            release.wait(timeout=10)  # a fetch that is still reading
        return record_hash(works, ctx)

    def failing_embed(works: list[DocWork], ctx: StageContext) -> list[DocWork]:
        assert recorder.second_batch_fetched.wait(timeout=10)
        raise KeyboardInterrupt  # what a cancellation signal raises in the main thread

    names_and_stages[1] = slow_hash
    names_and_stages[5] = failing_embed
    ctx = StageContext(collection_id=1, config=None, workdir=Path("."))  # type: ignore[arg-type]
    with pytest.raises(KeyboardInterrupt):
        stages.run_batches(
            [["b1"], ["b2"]],
            ctx,
            dimension=8,
            settings=IngestSettings(),
            stages=names_and_stages,
        )
    assert not release.is_set()  # the run did not wait for the next batch's fetch
    release.set()
    pause = threading.Event()
    for _ in range(100):
        if ("hash", "b2") in recorder.events:
            break
        pause.wait(0.05)
    pause.wait(0.2)  # time for a dedupe that should not come
    assert ("hash", "b2") in recorder.events
    assert ("dedupe", "b2") not in recorder.events
