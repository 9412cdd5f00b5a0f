"""A parser plugin that misbehaves on command, for the sandbox tests.

Imported into parse workers through ``ParseLimits(preload=(__name__,))``: it replaces the
plain-text parser with one that reads its first line as an order and otherwise hands over
to the real one::

    #!spin            burn CPU forever
    #!burn SECONDS    burn that much CPU, then parse the rest normally
    #!sleep SECONDS   sleep (no CPU)
    #!alloc           allocate until MemoryError
    #!c-oom           fill memory to the limit, then fail the way libxml2 does ("unknown error")
    #!segv            die of SIGSEGV
    #!exit CODE       exit abruptly with CODE
    #!print           write junk on stdout and stderr, then parse normally
    #!chars N         return N characters of text
    #!pid             return the worker's process id as the text
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator

from ingestflow.core.types import Segment
from tasks.parsers.base import TEXT, ParseInput, get_parser, parser, register_parser

MIB = 1024 * 1024
_real_text_parser = get_parser(TEXT)


@parser(TEXT, label="text file")
def misbehaving_text(source: ParseInput) -> Iterator[Segment]:
    first, _, _ = source.path.read_text(errors="replace").partition("\n")
    order, _, argument = first.removeprefix("#!").partition(" ")
    if not first.startswith("#!"):
        yield from _real_text_parser.parse(source)
    elif order == "spin":
        while True:
            pass
    elif order == "burn":
        started = time.process_time()
        while time.process_time() - started < float(argument):
            pass
        yield Segment("burnt")
    elif order == "sleep":
        time.sleep(float(argument))
    elif order == "alloc":
        hoard = []
        while True:
            hoard.append(bytearray(64 * MIB))
    elif order == "c-oom":
        _fill_memory()
        raise ValueError("unknown error (<string>, line 0)")
    elif order == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif order == "exit":
        os._exit(int(argument))
    elif order == "print":
        print("junk on stdout " * 1000, flush=True)
        print("junk on stderr", file=sys.stderr, flush=True)
        yield from _real_text_parser.parse(source)
    elif order == "chars":
        yield Segment("x" * int(argument))
    elif order == "pid":
        yield Segment(f"worker pid {os.getpid()}")
    else:
        raise ValueError(f"unknown order {order!r}")


def _fill_memory() -> None:
    """Allocate in small steps until the address space is full, then free it all: what a C
    library sees before its malloc returns NULL."""
    hoard = []
    try:
        while True:
            hoard.append(bytearray(4 * MIB))
    except MemoryError:
        pass
    hoard.clear()


register_parser(misbehaving_text, replace=True)
