"""Sweeping a local folder: new, changed, touched, deleted, and the deletion guard."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.db import consistency_problems, statuses


@pytest.fixture
def bucket(tmp_path: Path, collection: str) -> Path:
    folder = tmp_path / "bucket"
    folder.mkdir()
    for i in range(10):
        (folder / f"doc-{i}.txt").write_text(f"Document {i} of {collection} about sweeping.")
    return folder


def sweep(folder: Path, collection: str, **kwargs):
    from flows import sweep_bucket

    return sweep_bucket(str(folder), collection=collection, **kwargs)


def test_first_sweep_adds_everything_and_second_changes_nothing(pipeline, collection, bucket):
    first = sweep(bucket, collection)
    embedded = pipeline.stats().texts_embedded

    second = sweep(bucket, collection)

    assert (first.listed, first.added, first.deleted, first.failed) == (10, 10, 0, [])
    assert (second.listed, second.added, second.updated, second.unchanged) == (10, 0, 0, 10)
    assert pipeline.stats().texts_embedded == embedded
    assert consistency_problems(collection) == []


def test_changed_touched_and_deleted_objects(pipeline, collection, bucket):
    sweep(bucket, collection)
    (bucket / "doc-1.txt").write_text(f"New words about tide pools for {collection}.")
    touched = bucket / "doc-2.txt"
    stat = touched.stat()
    os.utime(touched, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    (bucket / "doc-3.txt").unlink()
    (bucket / "doc-new.txt").write_text(f"A brand new document for {collection}.")
    embedded = pipeline.stats().texts_embedded

    report = sweep(bucket, collection)

    assert (report.added, report.updated, report.deleted) == (1, 1, 1)
    assert report.unchanged == 8  # seven untouched plus the touched-but-identical one
    assert pipeline.stats().texts_embedded - embedded == 2  # doc-1 and doc-new only
    assert statuses(collection)["doc-3.txt"] == "deleted"
    assert consistency_problems(collection) == []


def test_mass_deletion_is_refused(pipeline, collection, bucket):
    from flows.sweep import SweepGuardError

    sweep(bucket, collection)
    for i in range(5):
        (bucket / f"doc-{i}.txt").unlink()

    with pytest.raises(SweepGuardError, match="refusing to delete 5 of 10"):
        sweep(bucket, collection, max_delete_fraction=0.2)

    assert "deleted" not in statuses(collection).values()
    report = sweep(bucket, collection, max_delete_fraction=0.5)
    assert report.deleted == 5


def test_failed_listing_deletes_nothing(pipeline, collection, bucket, monkeypatch):
    from flows.sweep import SweepGuardError
    from storage.stores.local import LocalFileStore

    sweep(bucket, collection)
    real = LocalFileStore.list_pages

    def failing(self, prefix, *, page_size=None):
        pages = real(self, prefix, page_size=3)
        yield next(pages)
        raise OSError("connection reset while listing")

    monkeypatch.setattr(LocalFileStore, "list_pages", failing)

    with pytest.raises(SweepGuardError, match="listing .* failed after 3 objects"):
        sweep(bucket, collection)

    assert set(statuses(collection).values()) <= {"indexed", "unchanged"}


def test_prune_false_never_deletes(pipeline, collection, bucket):
    sweep(bucket, collection)
    for path in bucket.iterdir():
        path.unlink()

    report = sweep(bucket, collection, prune=False)

    assert report.deleted == 0 and report.listed == 0
    assert "deleted" not in statuses(collection).values()
