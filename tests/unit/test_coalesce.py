"""Submissions within the window leave as one group; each caller hears its group's fate."""

from __future__ import annotations

import threading
import time

import pytest

from deployments.coalesce import Coalescer


def _add_all(coalescer: Coalescer[str], items: list[tuple[str, str]]) -> list[BaseException | None]:
    """Add every (key, member) from its own thread at once; the errors each caller saw."""
    errors: list[BaseException | None] = [None] * len(items)
    start = threading.Barrier(len(items))

    def add(i: int, key: str, member: str) -> None:
        start.wait()
        try:
            coalescer.add(key, member, 1)
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
            errors[i] = exc

    threads = [
        threading.Thread(target=add, args=(i, key, member)) for i, (key, member) in enumerate(items)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
        assert not thread.is_alive(), "a caller never heard back"
    return errors


def test_submissions_within_the_window_are_one_group_per_key() -> None:
    groups: list[list[str]] = []
    coalescer: Coalescer[str] = Coalescer(0.5, groups.append)
    items = [("a", f"a{i}") for i in range(6)] + [("b", f"b{i}") for i in range(3)]
    assert _add_all(coalescer, items) == [None] * len(items)
    assert sorted(sorted(g) for g in groups) == [
        [f"a{i}" for i in range(6)],
        [f"b{i}" for i in range(3)],
    ]


def test_a_submission_after_the_group_left_starts_another() -> None:
    groups: list[list[str]] = []
    coalescer: Coalescer[str] = Coalescer(0.0, groups.append)
    coalescer.add("a", "first", 1)
    coalescer.add("a", "second", 1)
    assert groups == [["first"], ["second"]]


def test_a_refused_group_raises_for_every_member() -> None:
    def refuse(members: list[str]) -> None:
        raise ConnectionError(f"backend down for {len(members)}")

    coalescer: Coalescer[str] = Coalescer(0.5, refuse)
    errors = _add_all(coalescer, [("a", str(i)) for i in range(4)])
    assert all(isinstance(e, ConnectionError) for e in errors)
    with pytest.raises(ConnectionError):  # and the next group is tried afresh
        coalescer.add("a", "later", 1)


def test_a_full_group_leaves_without_waiting_out_the_window() -> None:
    groups: list[list[str]] = []
    # A window no test would sit out: only a full group lets these callers return.
    coalescer: Coalescer[str] = Coalescer(3600, groups.append, max_documents=3)
    assert _add_all(coalescer, [("a", str(i)) for i in range(3)]) == [None] * 3
    assert [sorted(g) for g in groups] == [["0", "1", "2"]]


def test_a_group_stays_open_while_submissions_keep_joining() -> None:
    groups: list[list[str]] = []
    coalescer: Coalescer[str] = Coalescer(1.0, groups.append)
    threads = []
    for i in range(4):  # 1.2 s from first to last, never a quiet second between them
        thread = threading.Thread(target=coalescer.add, args=("a", str(i), 1))
        thread.start()
        threads.append(thread)
        time.sleep(0.4)
    for thread in threads:
        thread.join(30)
    assert [sorted(g) for g in groups] == [["0", "1", "2", "3"]]
