"""`vnp report OUT`: write OUT/report.html, plots and tables of a finished run.

    vnp report OUT [--top 10]

Written by rank 0 at the end of `vnp predict` (and by `vnp call`), or on demand, from the files in
OUT only (see `vnp.results.report`): a missing file or column leaves a note in its section.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vnp.results.report.data import TOP_N
from vnp.results.report.page import write_report
from vnp.support.errors import InputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT", help="output folder of a finished vnp predict run")
    parser.add_argument("--top", type=int, default=TOP_N, help=f"sequences and regions listed and plotted "
                        f"(default {TOP_N})")


def run(args: argparse.Namespace) -> int:
    try:
        if args.top < 1:
            raise InputError(f"--top must be at least 1, got {args.top}")
        path = write_report(Path(args.out), top=args.top)
    except InputError as err:
        print(f"vnp: error: {err}", file=sys.stderr)
        return 2
    print(f"vnp: report in {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from vnp.cli import module_main

    return module_main(sys.modules[__name__], argv)



if __name__ == "__main__":
    sys.exit(main())
