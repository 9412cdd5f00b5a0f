"""``python -m bench COMMAND``: the benchmark commands.

    run             ingestflow against LangChain and LlamaIndex (bench/harness.py)
    upload-memory   server memory during a large upload (bench/upload_memory.py)
    embedders       all-MiniLM-L6-v2 backends on this machine (bench/embedder_backends.py)
    latency         upload to searchable through the whole stack, per design (bench/latency.py)
    notebook        ingest() with no Prefect server: ephemeral mode against the background
                    server (bench/notebook.py)
    remote          a hosted-style embedding API at its rate limit, current design against
                    the previous one, one worker and several (bench/remote.py)
    scale           one job shared by 1, 2 and 4 workers on each queue backend, with a
                    worker killed mid-part (bench/scale.py)

``python -m bench run --small --embedder hash --systems ingestflow`` is the quick check.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.harness import EMBEDDERS, REPO, SYSTEMS, Options, RemoteAPI


def _upload_memory(argv: list[str]) -> None:
    from bench.upload_memory import main

    sys.argv = ["python -m bench upload-memory", *argv]  # its usage line and recorded command
    main(argv)


def _embedders(argv: list[str]) -> None:
    from bench import embedder_backends

    sys.argv = ["python -m bench embedders", *argv]  # it parses sys.argv itself
    embedder_backends.main()


def _latency(argv: list[str]) -> None:
    from bench.latency import main

    main(argv)


def _notebook(argv: list[str]) -> None:
    from bench.notebook import main

    main(argv)


def _scale(argv: list[str]) -> None:
    from bench.scale import main

    main(argv)


def _remote(argv: list[str]) -> None:
    from bench.remote import main

    main(argv)


DELEGATES: dict[str, Callable[[list[str]], None]] = {
    "upload-memory": _upload_memory,
    "embedders": _embedders,
    "latency": _latency,
    "notebook": _notebook,
    "remote": _remote,
    "scale": _scale,
}


def _names(value: str, known: Sequence[str], what: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{what}: choose from {', '.join(known)}")
    return names


def _at_least_10(value: str) -> int:
    n = int(value)
    if n < 10:
        raise argparse.ArgumentTypeError("at least 10 documents")
    return n


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run",
        help="ingestflow against its peers: first ingest, re-ingest, 5%% change, 5%% delete",
        description="Run every selected system through the same phases on the same corpus,"
        " embedder and Postgres; print the tables and ratios; write JSON and PNG plots.",
    )
    size = run.add_mutually_exclusive_group()
    size.add_argument("--small", action="store_true", help="the first 300 SciFact documents")
    size.add_argument(
        "--docs",
        type=_at_least_10,
        help="the first N SciFact documents (at least 10, so the documents deleted stay"
        " within the sweep's default deletion guard of 20%%)",
    )
    run.add_argument(
        "--embedder",
        choices=[*EMBEDDERS, "both", "remote"],
        default="both",
        help="all-MiniLM-L6-v2 (minilm), the deterministic hash embedder, both (default), or"
        " remote: every system's own OpenAI integration against a local OpenAI-compatible"
        " server with latency and a tokens-per-minute limit",
    )
    run.add_argument(
        "--remote-latency", type=float, default=0.25, help="remote: seconds per request"
    )
    run.add_argument(
        "--remote-tokens-per-minute",
        type=int,
        default=1_000_000,
        help="remote: the limit the server enforces with 429 and Retry-After",
    )
    run.add_argument(
        "--systems",
        type=lambda v: _names(v, SYSTEMS, "--systems"),
        default=SYSTEMS,
        help=f"comma-separated, default {','.join(SYSTEMS)}",
    )
    run.add_argument(
        "--micro",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the micro-benchmark modules that exist (default: yes)",
    )
    run.add_argument(
        "--mixed",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also ingest the mixed-format corpus with ingestflow (default: yes)",
    )
    run.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    run.add_argument("--prefect-api-url", help="use this Prefect server instead of starting one")
    commands.add_parser(
        "upload-memory", add_help=False, help="bench/upload_memory.py (its own --help)"
    )
    commands.add_parser(
        "embedders", add_help=False, help="bench/embedder_backends.py (its own --help)"
    )
    commands.add_parser("latency", add_help=False, help="bench/latency.py (its own --help)")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] in DELEGATES:
        DELEGATES[args_list[0]](args_list[1:])
        return
    args = build_parser().parse_args(args_list)
    from bench.harness import run

    options = Options(
        docs=args.docs,
        small=args.small,
        embedders=EMBEDDERS if args.embedder == "both" else (args.embedder,),
        systems=args.systems,
        micro=args.micro,
        mixed=args.mixed,
        out=args.out,
        prefect_api_url=args.prefect_api_url,
        remote=RemoteAPI(
            latency=args.remote_latency, tokens_per_minute=args.remote_tokens_per_minute
        ),
    )
    run(options, args_list)


if __name__ == "__main__":
    main()
