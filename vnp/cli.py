"""The `vnp` console script: one subcommand per stage.

    vnp predict INPUT... -o OUT [key=value ...]    the whole job, under any launcher
    vnp translate INPUT... -L 500 -o DIR           chunking and six-frame translation only
    vnp embed dnabert|esm INPUT -m MODEL -o OUT.npz
    vnp pack tiny DIR | vnp pack convert --classifier X.pth -o DIR
    vnp models fetch 500 -o DIR | verify DIR | list   the published models for offline clusters
    vnp call OUT [key=value ...]                   new calls, regions, FASTA of a finished run
    vnp report OUT                                 OUT/report.html: plots and tables of a finished run
    vnp train MANIFEST.tsv -o DIR [key=value ...]   train a classifier head, under any launcher
    vnp evaluate OUT LABELS.tsv                    metrics of a prediction run against true labels
    vnp calibrate OUT LABELS.tsv [...] -o C.json   probabilities and FDR from labelled runs (then calibration=C.json)
    vnp --version                                  prints `vnp X.Y.Z`
"""

from __future__ import annotations

import argparse
import importlib
import sys

from vnp.support.command import parse

# This module only dispatches: what the commands share is in vnp.support.command (entry points,
# parsing, the exit-code mapping) and vnp.run.lifecycle (a rank's life); no command imports it.

from vnp import __version__

# subcommand -> (module that defines `add_arguments(parser)` and `run(args) -> int`, one-line help).
# Only the module of the subcommand that runs is imported: `vnp --help` and `vnp translate` stay
# free of torch. Listed in pipeline order; `predict` goes after `embed`.
SUBCOMMANDS = {
    "translate": ("vnp.translate", "chunk and six-frame translate sequences (the original's intermediate files)"),
    "embed": ("vnp.embed", "embed nucleotide frames with DNABERT-S or protein frames with ESM2 (.npz out)"),
    "pack": ("vnp.models.pack", "build the tiny test pack, or convert a published classifier to vnp's format"),
    "models": ("vnp.models.manage", "fetch the published models for offline use, verify a fetched pack, list packs"),
    "predict": ("vnp.predict", "predict viral chunks and sequences (distributed over any number of ranks)"),
    "call": ("vnp.call", "recompute calls, regions, FASTA and summaries of a finished run (no model loaded)"),
    "report": ("vnp.report", "write OUT/report.html: plots and tables of a finished run (predict writes it too)"),
    "train": ("vnp.train", "train a VirNucPro classifier head with DDP (features by the same engine)"),
    "evaluate": ("vnp.evaluate", "metrics of a finished prediction run against true labels"),
    "calibrate": ("vnp.calibrate", "fit P(virus) per chunk and sequence from labelled runs (for calibration=)"),
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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)  # `vnp` itself takes only -h
    args = parse(create_parser(command), argv)
    return args._run(args)


if __name__ == "__main__":
    sys.exit(main())
