"""The `vnp` console script: one subcommand per stage.

    vnp predict INPUT... -o OUT [key=value ...]    the whole job, under any launcher
    vnp translate INPUT... -L 500 -o DIR           chunking and six-frame translation only
    vnp embed dnabert|esm INPUT -m MODEL -o OUT.npz
    vnp pack tiny DIR | vnp pack convert --classifier X.pth -o DIR
    vnp train MANIFEST.tsv -o DIR [key=value ...]   train a classifier head, under any launcher
    vnp evaluate OUT LABELS.tsv                    metrics of a prediction run against true labels
"""

from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType

# subcommand -> module that defines `add_arguments(parser)` and `run(args) -> int`
# (listed in pipeline order; `predict` goes after `embed`)
SUBCOMMANDS = {
    "translate": "vnp.translate",
    "embed": "vnp.embed",
    "pack": "vnp.models.pack",
    "predict": "vnp.predict",
    "train": "vnp.train",
    "evaluate": "vnp.evaluate",
}


def create_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vnp", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
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


def main(argv: list[str] | None = None) -> int:
    args = parse(create_parser(), argv)
    return args._run(args)


if __name__ == "__main__":
    sys.exit(main())
