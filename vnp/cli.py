"""The `vnp` console script: one subcommand per stage.

    vnp translate INPUT... -L 500 -o DIR
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> module that defines `add_arguments(parser)` and `run(args) -> int`
SUBCOMMANDS = {
    "translate": "vnp.translate",
}


def create_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vnp", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = create_parser().parse_args(argv)
    return args._run(args)


if __name__ == "__main__":
    sys.exit(main())
