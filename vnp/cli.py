"""The `vnp` console script: one subcommand per stage.

    vnp predict INPUT... -o OUT [key=value ...]    the whole job, under any launcher
    vnp translate INPUT... -L 500 -o DIR           chunking and six-frame translation only
    vnp embed dnabert|esm INPUT -m MODEL -o OUT.npz
    vnp pack tiny DIR | vnp pack convert --classifier X.pth -o DIR
    vnp call OUT [key=value ...]                   new calls, regions, FASTA of a finished run
    vnp report OUT                                 OUT/report.html: plots and tables of a finished run
    vnp train MANIFEST.tsv -o DIR [key=value ...]   train a classifier head, under any launcher
    vnp evaluate OUT LABELS.tsv                    metrics of a prediction run against true labels
    vnp --version                                  prints `vnp X.Y.Z`
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Callable
from types import ModuleType

from vnp import __version__

# subcommand -> (module that defines `add_arguments(parser)` and `run(args) -> int`, one-line help).
# Only the module of the subcommand that runs is imported: `vnp --help` and `vnp translate` stay
# free of torch. Listed in pipeline order; `predict` goes after `embed`.
SUBCOMMANDS = {
    "translate": ("vnp.translate", "chunk and six-frame translate sequences (the original's intermediate files)"),
    "embed": ("vnp.embed", "embed nucleotide frames with DNABERT-S or protein frames with ESM2 (.npz out)"),
    "pack": ("vnp.models.pack", "build the tiny test pack, or convert a published classifier to vnp's format"),
    "predict": ("vnp.predict", "predict viral chunks and sequences (distributed over any number of ranks)"),
    "call": ("vnp.call", "recompute calls, regions, FASTA and summaries of a finished run (no model loaded)"),
    "report": ("vnp.report", "write OUT/report.html: plots and tables of a finished run (predict writes it too)"),
    "train": ("vnp.train", "train a VirNucPro classifier head with DDP (features by the same engine)"),
    "evaluate": ("vnp.evaluate", "metrics of a finished prediction run against true labels"),
}


def create_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `vnp` parser; only `command`'s module is imported, to add that subcommand's arguments."""
    parser = argparse.ArgumentParser(prog="vnp", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"vnp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_line) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_line, formatter_class=argparse.RawDescriptionHelpFormatter)
        if name == command:
            module = importlib.import_module(module_name)
            p.description = module.__doc__
            module.add_arguments(p)
            p.set_defaults(_run=module.run)
    return parser


def module_main(module: ModuleType, argv: list[str] | None = None) -> int:
    """`python -m vnp.<module>`: the same arguments as `vnp <command>`."""
    command = module.__spec__.name.rsplit(".", 1)[-1]
    parser = argparse.ArgumentParser(prog=f"vnp {command}", description=module.__doc__,
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


def rank_command(args: argparse.Namespace, config_class: type, check_inputs: Callable[[list[str]], str | None],
                 out_usage: str):
    """(inputs, configuration) of a command every rank runs (`vnp predict`, `vnp train`), or the exit
    code 2 after one line: said by rank 0 only, or by every process when no rank can be known."""
    from vnp.run import dist as vdist
    from vnp.support.config import load_config
    from vnp.support.errors import InputError

    try:
        env = vdist.detect_env()
    except InputError as err:  # no rank is known: every process says it
        print(f"vnp: error: {err}", file=sys.stderr)
        return 2
    try:
        inputs, overrides = split_items(args.items)
        problem = check_inputs(inputs)
        if problem:
            raise InputError(problem)
        if not args.out:
            raise InputError(f"no output folder given ({out_usage})")
        return inputs, load_config(args.config, overrides, cls=config_class)
    except InputError as err:
        if env.rank == 0:  # the same error on every rank: say it once
            print(f"vnp: error: {err}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)  # `vnp` itself takes only -h
    args = parse(create_parser(command), argv)
    return args._run(args)


if __name__ == "__main__":
    sys.exit(main())
