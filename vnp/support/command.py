"""What every command shares below `vnp.cli`: its `python -m vnp.<command>` entry, the parsing of
`INPUT... key=value` items, and the one mapping from how a command ended to its exit code.

    InputError   2    its one line (unless another rank says it)
    Stopped      143  rank 0 says nothing was lost and how to start again
    PeerFailure  1    quiet where the failing rank (or rank 0) says why, else its one line
    anything else 1   its type and first line, and where its traceback went

`vnp.run.lifecycle.run_rank` sends a rank's every failure here; a single-process command's `run`
is wrapped by `command`, which sends the errors above here and lets a bug's traceback through.
Importing this module does not import torch.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import traceback
from types import ModuleType
from typing import Callable

from vnp.support.errors import InputError, PeerFailure, Stopped

EXPECTED = (InputError, Stopped, PeerFailure)


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def exit_code(err: BaseException, rank: int | None = None, where: str = "",
              keep_traceback: Callable[[], str] | None = None) -> int:
    """The exit code of a command that ended with `err`, after at most one line on stderr (module
    docstring). `rank`: the rank of a command every rank runs (None: a single process); `where`:
    its output folder, named when a stop signal ended the preparation; `keep_traceback()` writes
    the traceback of an unexpected error where it belongs and returns ' (log: PATH)' or ''."""
    if isinstance(err, InputError):
        if not err.reported:
            say(f"vnp: error: {err}")
        return InputError.exit_code
    if isinstance(err, Stopped):
        if not rank:
            say(f"vnp: stopped by signal while preparing the run in {where}; nothing was lost. "
                "Run the same command again to start it.")
        return Stopped.exit_code
    if isinstance(err, PeerFailure):
        if not err.reported:
            say(f"vnp: error: {err}")
        return PeerFailure.exit_code
    text = str(err).strip()
    first = text.splitlines()[0] if text else ""
    logged = keep_traceback() if keep_traceback is not None else ""
    who = "" if rank is None else f"rank {rank} "
    say(f"vnp: error: {who}failed: {type(err).__name__}: {first}{logged}")
    if keep_traceback is None:
        traceback.print_exc()
    return 1


def command(run: Callable[[argparse.Namespace], int | None]) -> Callable[[argparse.Namespace], int]:
    """A command's `run(args)`: its expected errors become their exit code through `exit_code`."""

    @functools.wraps(run)
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return run(args) or 0
        except EXPECTED as err:
            return exit_code(err)

    return wrapper


def module_main(module: ModuleType, argv: list[str] | None = None) -> int:
    """`python -m vnp.<module>`: the same arguments as `vnp <command>`."""
    name = module.__spec__.name.rsplit(".", 1)[-1]
    parser = argparse.ArgumentParser(prog=f"vnp {name}", description=module.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(parser)
    return module.run(parse(parser, argv))


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Like parse_args, but positional items may also follow options (`INPUT -o OUT key=value`)."""
    args, extra = parser.parse_known_args(argv)
    if extra and (not hasattr(args, "items") or any(e.startswith("-") for e in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.items = list(args.items) + extra
    return args


def split_items(items: list[str]) -> tuple[list[str], list[str]]:
    """Inputs are paths; `key=value` items (that are not existing files) are overrides."""
    inputs, overrides = [], []
    for item in items:
        (overrides if "=" in item and not os.path.exists(item) else inputs).append(item)
    return inputs, overrides
