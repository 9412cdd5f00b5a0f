"""The bench corpora, and the edits made to them between phases.

- **SciFact** (``../shared/eval-data/scifact/corpus.jsonl``, 5,183 abstracts): one
  ``<_id>.txt`` file per document holding ``title + " " + text``, as ``ingestflow eval beir``
  and MTEB build them. Every system gets its own fresh copy of the same files.
- **Edits**, seeded and the same for every system: 5% of the documents change, another,
  disjoint 5% are deleted. A changed document gets one sentence of its second half replaced
  and a new sentence appended, so its first chunk usually stays the same and its later ones
  change, as with a real edit: a system that re-embeds only new chunk texts embeds less than
  the changed documents' whole chunk count.
- **Mixed formats** (``../shared/eval-data/pdfs`` and ``docs``): PDFs, Office files, HTML,
  CSV, JSON, Markdown and non-UTF-8 text, encrypted and broken files included. The peers
  load plain text only, so this corpus is an ingestflow-only row.

``python -m bench.corpus DIR [--small | --docs N]`` writes the SciFact files to ``DIR``.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EVAL_DATA = REPO.parent / "shared" / "eval-data"
SCIFACT = EVAL_DATA / "scifact"
SMALL_DOCS = 300
EDIT_FRACTION = 0.05
SEED = 20261122

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def scifact_documents(
    limit: int | None = None, dataset: Path = SCIFACT
) -> Iterator[tuple[str, str]]:
    """``(doc id, title + " " + text)`` in corpus order, the first ``limit`` of them."""
    with (dataset / "corpus.jsonl").open(encoding="utf-8") as fh:
        count = 0
        for line in fh:
            if limit is not None and count >= limit:
                return
            if line.strip():
                doc = json.loads(line)
                yield doc["_id"], f"{doc.get('title', '')} {doc['text']}".strip()
                count += 1


def write_scifact(folder: Path, limit: int | None = None, dataset: Path = SCIFACT) -> list[str]:
    """Write one ``<id>.txt`` per document into ``folder``; returns the ids written."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = []
    for doc_id, text in scifact_documents(limit, dataset):
        (folder / f"{doc_id}.txt").write_text(text, encoding="utf-8")
        ids.append(doc_id)
    return ids


@dataclass(frozen=True)
class EditPlan:
    """Which documents change and which are deleted: disjoint, sorted, seeded."""

    changed: list[str]
    deleted: list[str]
    seed: int


def plan_edits(ids: list[str], fraction: float = EDIT_FRACTION, seed: int = SEED) -> EditPlan:
    """``fraction`` of ``ids`` to change and another ``fraction`` to delete (at least one
    each when there are two or more documents)."""
    count = max(1, round(len(ids) * fraction)) if len(ids) >= 2 else 0
    picked = random.Random(seed).sample(sorted(ids), 2 * count)
    return EditPlan(changed=sorted(picked[:count]), deleted=sorted(picked[count:]), seed=seed)


def edited_text(doc_id: str, text: str, seed: int = SEED) -> str:
    """``text`` with one sentence of its second half replaced and a new sentence appended."""
    rng = random.Random(f"{seed}:{doc_id}")
    sentences = _SENTENCE_END.split(text.strip())
    index = rng.randrange(len(sentences) // 2, len(sentences))
    sentences[index] = (
        f"In a follow-up cohort of {rng.randint(20, 900)} participants, the effect reported in"
        f" study {doc_id} was revised to {rng.randint(2, 98)} percent."
    )
    sentences.append(
        f"Revision note {rng.randint(1000, 9999)}: these findings were re-examined in"
        f" {rng.randint(2001, 2025)} and the main conclusion was confirmed."
    )
    return " ".join(sentences)


def apply_changes(folder: Path, plan: EditPlan) -> None:
    """Rewrite the planned documents in place with their edited text."""
    for doc_id in plan.changed:
        path = folder / f"{doc_id}.txt"
        text = path.read_text(encoding="utf-8")
        path.write_text(edited_text(doc_id, text, plan.seed), encoding="utf-8")


def apply_deletes(folder: Path, plan: EditPlan) -> None:
    for doc_id in plan.deleted:
        (folder / f"{doc_id}.txt").unlink()


def write_mixed_formats(folder: Path, eval_data: Path = EVAL_DATA) -> list[str]:
    """Copy every PDF and every file of ``docs/`` (manifests aside) into one flat folder;
    returns the file names. Encrypted PDFs come without their passwords, so they fail with
    their reason, as in a folder a user points the sweep at."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted((eval_data / "pdfs").glob("*.pdf"))
    sources += sorted(p for p in (eval_data / "docs").rglob("*") if p.is_file())
    names = []
    for path in sources:
        if path.name == "MANIFEST.tsv":
            continue
        name = path.name if not (folder / path.name).exists() else f"{path.parent.name}-{path.name}"
        shutil.copyfile(path, folder / name)
        names.append(name)
    return names


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the SciFact bench corpus to a folder.")
    parser.add_argument("folder", type=Path)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--small", action="store_true", help=f"the first {SMALL_DOCS} documents")
    size.add_argument("--docs", type=int, help="the first N documents")
    args = parser.parse_args(argv)
    limit = args.docs if args.docs is not None else (SMALL_DOCS if args.small else None)
    ids = write_scifact(args.folder, limit)
    print(f"wrote {len(ids)} documents to {args.folder}")


if __name__ == "__main__":
    main()
