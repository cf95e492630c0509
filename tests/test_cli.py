"""The `vnp` command line: every subcommand listed, and torch imported only by those that need it."""

from __future__ import annotations

import argparse
import importlib
import re
import subprocess
import sys

import pytest

from tests.helpers import ROOT, child_env
from vnp.cli import SUBCOMMANDS, create_parser, main as vnp_main

# Runs `vnp ARGS...` in a fresh interpreter, then prints which heavy modules were imported.
PROBE = """
import sys
from vnp.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as stop:
    code = stop.code
import vnp.seq.chunking, vnp.run.plan, vnp.seq.seqio, vnp.translate
print("torch imported:", "torch" in sys.modules, file=sys.stderr)
sys.exit(code)
"""


def vnp_fresh(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=child_env(),
                          cwd=ROOT, timeout=120)


def test_help_lists_every_subcommand_with_its_usage_without_torch():
    proc = vnp_fresh("--help")
    assert proc.returncode == 0, proc.stderr
    assert "torch imported: False" in proc.stderr
    text = " ".join(proc.stdout.split())  # argparse wraps the help lines
    for name, (_, help_line) in SUBCOMMANDS.items():
        assert f"{name} {help_line}" in text
        assert re.search(rf"^    vnp {name} ", proc.stdout, re.M), f"no usage line for {name}"


def test_translate_runs_without_torch(tmp_path):
    (tmp_path / "a.fa").write_text(">s1\nATGGCCAAAGGC\n")
    proc = vnp_fresh("translate", "--help")
    assert proc.returncode == 0 and "--chunk-length" in proc.stdout
    assert "torch imported: False" in proc.stderr
    proc = vnp_fresh("translate", str(tmp_path / "a.fa"), "-o", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    assert "torch imported: False" in proc.stderr
    assert (tmp_path / "out" / "a_identified_protein.faa").read_text().startswith(">s1_chunk_1F1\nMAKG\n")


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    """Every option of a parser and of its nested subcommands."""
    found = set()
    for action in parser._actions:
        found.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found |= option_strings(child)
    return found


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_usage_lines_match_the_real_parsers(name):
    """The static table and usage lines of `vnp --help` against each subcommand's own parser."""
    module = importlib.import_module(SUBCOMMANDS[name][0])
    assert callable(module.add_arguments) and callable(module.run)
    parser = create_parser(name)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
    assert sub.description == module.__doc__
    options = option_strings(sub)
    usage = re.findall(rf"^    vnp {name} (.*)$", parser.description, re.M)
    written = {token.strip("[]") for line in usage for token in line.split() if token.startswith(("-", "[-"))}
    assert usage and written <= options


def test_unknown_subcommand_is_refused(capsys):
    with pytest.raises(SystemExit) as stop:
        vnp_main(["nope"])
    assert stop.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err


def test_version_prints_the_package_version_without_torch():
    import vnp

    proc = vnp_fresh("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"vnp {vnp.__version__}\n"
    assert "torch imported: False" in proc.stderr
