"""What every ``ingestflow`` command group shares: the consoles and one-line errors."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from ingestflow.core.errors import IngestError

# soft_wrap: long paths and reasons stay on one line when output goes to a file or a pipe.
console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
F = TypeVar("F", bound=Callable[..., Any])


def one_line_errors(fn: F) -> F:
    """Print errors as one clear line and exit 1; INGESTFLOW_DEBUG=1 shows the traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:
            if os.environ.get("INGESTFLOW_DEBUG"):
                raise
            text = exc.reason if isinstance(exc, IngestError) else f"{type(exc).__name__}: {exc}"
            line = text.splitlines()[0] if text else type(exc).__name__
            err.print(f"[red]error:[/red] {escape(line)}")
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]
