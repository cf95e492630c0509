"""One meaning per name: no alias properties on RunState, frame IDs built in one place, no two
modules of vnp defining the same top-level name."""

from __future__ import annotations

import ast
import collections

from tests.helpers import ROOT

SOURCES = sorted((ROOT / "vnp").rglob("*.py"))
# Names every command module defines by contract (vnp.cli calls them).
COMMAND_CONTRACT = {"add_arguments", "run", "main", "log"}


def test_run_state_has_no_alias_properties():
    from vnp.run.state import RunState

    properties = [name for name, value in vars(RunState).items() if isinstance(value, property)]
    assert properties == ["n_units"]  # computed, not another name for a RunSpec field


def test_no_two_modules_define_the_same_top_level_name():
    where = collections.defaultdict(list)
    for path in SOURCES:
        for node in ast.parse(path.read_text()).body:
            names = [node.name] if isinstance(node, (ast.FunctionDef, ast.ClassDef)) else \
                [t.id for t in node.targets if isinstance(t, ast.Name)] if isinstance(node, ast.Assign) else []
            for name in names:
                if name not in COMMAND_CONTRACT and not name.startswith("__"):
                    where[name].append(str(path.relative_to(ROOT)))
    assert {name: paths for name, paths in where.items() if len(paths) > 1} == {}


def test_frame_ids_are_built_only_by_frame_id():
    """FRAME_NAMES is indexed only by `frame_id`, and a chunk ID is formatted only by `chunk_id`."""
    for path in SOURCES:
        name = str(path.relative_to(ROOT))
        tree = ast.parse(path.read_text())
        if name != "vnp/seq/frames.py":
            assert not [n for n in ast.walk(tree) if isinstance(n, ast.Subscript)
                        and isinstance(n.value, ast.Name) and n.value.id == "FRAME_NAMES"], name
        if name != "vnp/seq/chunking.py":
            assert not [n for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) and any(
                isinstance(v, ast.Constant) and "_chunk_" in str(v.value) for v in n.values)], name


def test_frame_id():
    from vnp.seq.chunking import chunk_id
    from vnp.seq.frames import frame_id

    assert frame_id(chunk_id("seq1", 3), 3) == "seq1_chunk_3R1"
