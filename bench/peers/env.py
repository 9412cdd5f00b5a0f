"""The peer systems' own virtual environment: LangChain and LlamaIndex, apart from ingestflow's.

The peers pull dependency trees (langsmith, nltk, tiktoken, asyncpg, ...) that ingestflow does
not have and that could clash with its pins, so they live in ``.bench-peers-venv/`` at the
repository root, installed from ``bench/peers/requirements.txt``. Installing is idempotent: a
stamp file in the venv holds the hash of the requirements it was installed from, and nothing is
done while it matches. Only the standard library is used, so any Python 3.11 can run this.

    python -m bench.peers.env [--python /path/to/python3.11]

prints the peers' interpreter once the environment is ready.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import time
import venv
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_DIR = REPO_ROOT / ".bench-peers-venv"
REQUIREMENTS = Path(__file__).with_name("requirements.txt")
STAMP = VENV_DIR / ".requirements-sha256"
INSTALL_LOG = VENV_DIR / "install.log"


def peer_python() -> Path:
    """The interpreter the peer runners are run with (it exists once ``ensure_env`` ran)."""
    return VENV_DIR / "bin" / "python"


def requirements_hash() -> str:
    return hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()


def is_up_to_date() -> bool:
    """True when the venv exists and was installed from the current requirements."""
    if not peer_python().exists() or not STAMP.exists():
        return False
    return STAMP.read_text().strip() == requirements_hash()


def ensure_env(base_python: str | None = None) -> Path:
    """Create the venv if missing and install the requirements unless the stamp matches.

    ``base_python`` makes the venv from another interpreter (it must be Python 3.11); by
    default it is made from the running one. The stamp is written only after pip succeeded,
    so an interrupted install is redone next time. Returns ``peer_python()``.
    """
    if is_up_to_date():
        return peer_python()
    if not peer_python().exists():
        _create_venv(base_python)
    wanted = requirements_hash()
    started = time.monotonic()
    print(f"installing the peers' requirements into {VENV_DIR} ...", file=sys.stderr)
    with INSTALL_LOG.open("w") as log:
        result = subprocess.run(
            [
                str(peer_python()),
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "-r",
                str(REQUIREMENTS),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if result.returncode != 0:
        tail = INSTALL_LOG.read_text().splitlines()[-30:]
        raise RuntimeError(
            "installing the peers' requirements failed; the full log is in "
            f"{INSTALL_LOG}:\n" + "\n".join(tail)
        )
    STAMP.write_text(wanted + "\n")
    print(f"installed in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return peer_python()


def _create_venv(base_python: str | None) -> None:
    if base_python is None:
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV_DIR)
        return
    subprocess.run([base_python, "-m", "venv", "--clear", str(VENV_DIR)], check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--python", help="Python 3.11 to make the venv from (default: this interpreter)"
    )
    args = parser.parse_args(argv)
    print(ensure_env(args.python))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
