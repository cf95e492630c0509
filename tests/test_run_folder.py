"""The run folder object (every path in OUT, its lock, the run record) and the run description
rank 0 hands to the other ranks."""

import ast
import dataclasses
import json
import re

import pytest

from tests.helpers import ROOT

from vnp.support.errors import InputError
from vnp.models.pack import ModelPack
from vnp.run.folder import RunFolder, TrainingFolder, differences, keep_unit_size
from vnp.run.state import RunSpec


def test_every_path_is_inside_out(tmp_path):
    folder = RunFolder(tmp_path / "out")
    paths = [folder.work, folder.parts, folder.embeddings, folder.log(3), folder.run_record_path, folder.index,
             folder.sequences, folder.ids, folder.config_yaml, folder.run_json, folder.report_html,
             folder.ready("n"), folder.remaining("n"), folder.heartbeat("n"), folder.stop_request("n"),
             folder.alive(2), folder.lock_path, folder.tiny_pack]
    assert all(path.is_relative_to(tmp_path / "out") for path in paths)
    assert len(set(paths)) == len(paths)
    assert folder.log(3) == tmp_path / "out" / "logs" / "rank3.log"
    assert folder.run_record_path == tmp_path / "out" / "work" / "record.json"


def test_every_path_of_a_training_dir_is_inside_it(tmp_path):
    folder = TrainingFolder(tmp_path / "dir")
    features = folder.features
    paths = [folder.work, folder.tiny_pack, folder.checkpoint, folder.classifier, folder.pack_yaml,
             folder.metrics_json, folder.learning_curve, folder.log(0), features.run_record_path, features.parts,
             *features.arrays, features.cds_text, features.cds_index, features.record_labels, features.sequences]
    assert all(path.is_relative_to(tmp_path / "dir") for path in paths)
    assert len(set(paths)) == len(paths)
    assert folder.tiny_pack == tmp_path / "dir" / "work" / "tiny_pack"
    # the layout of training dirs made before (resumed as they are)
    assert features.matrix == tmp_path / "dir" / "features" / "features.npy"
    assert features.run_record_path == tmp_path / "dir" / "features" / "record.json"


FILE_NAME = re.compile(r"[\w.-]+\.(npy|npz|json|yaml|png|pt|bin|txt|safetensors)")


def test_only_the_run_folder_spells_the_paths_of_a_training_dir():
    """`vnp train`'s modules name no file or folder of DIR: no file-name literal, no `path / "name"`,
    no `joinpath("name")`; TrainingFolder and FeatureFolder name them all."""
    spelled = []
    for path in [ROOT / "vnp" / "train.py", *sorted((ROOT / "vnp" / "training").glob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text())):
            literal = isinstance(node, ast.Constant) and isinstance(node.value, str) and FILE_NAME.fullmatch(node.value)
            joined = isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and isinstance(node.right, ast.Constant)
            called = (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "joinpath"
                      and any(isinstance(a, ast.Constant) for a in node.args))
            if literal or joined or called:
                spelled.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert spelled == []


def test_the_lock_is_held_until_close(tmp_path):
    first, second = RunFolder(tmp_path), RunFolder(tmp_path)
    first.check_usable()
    first.lock()
    with pytest.raises(InputError, match="another vnp run is using this output folder"):
        second.lock()
    with pytest.raises(InputError, match=f"^{tmp_path}: a vnp run is using this output folder$"):
        second.lock(busy="a vnp run is using this output folder")
    first.close()
    with second:
        second.lock()  # free again
    first.lock()  # and released by leaving the `with`
    first.close()


def test_run_record_is_written_atomically_and_compared(tmp_path):
    folder = RunFolder(tmp_path)
    folder.check_usable()
    run_record = {"inputs": [{"path": "a.fa"}], "models": {"classifier": "c", "esm": "e", "dnabert": "d"},
                  "unit_chunks": 4}
    assert not folder.holds_same_run(run_record, None, force=False)  # nothing recorded yet
    folder.write_run_record(run_record)
    assert folder.run_record_path.read_text() == json.dumps(run_record, indent=2) + "\n"
    assert not list(tmp_path.rglob("*.tmp"))
    assert folder.holds_same_run(run_record, None, force=False)
    other = {**run_record, "unit_chunks": 8}
    with pytest.raises(InputError, match=r"holds a run with different unit_chunks; rerun with force=true"):
        folder.holds_same_run(other, None, force=False)
    assert not folder.holds_same_run(other, None, force=True)
    folder.forget_run_record()
    assert folder.read_run_record() is None


# A run record with every key that changes results, and one change of each, as a resume sees them.
RECORD = {"inputs": [{"path": "/in/a.fa", "size": 10, "sha256": "aa"}],
          "models": {"classifier": "c", "esm": "e", "dnabert": "d"}, "pack": "p1", "chunk_length": 300,
          "unit_chunks": 4, "precision": "fp32", "esm_attention": "math", "device": "cpu",
          "save_embeddings": False, "filters": {"min_length": 0, "max_n_fraction": 1.0}}
CHANGES = [("inputs", [{"path": "/in/a.fa", "size": 10, "sha256": "bb"}], "inputs \\(file contents or paths\\)"),
           ("pack", "p2", "pack"), ("chunk_length", 500, "chunk_length"), ("unit_chunks", 8, "unit_chunks"),
           ("precision", "bf16", "precision"), ("esm_attention", "flash", "esm_attention"),
           ("device", "cuda", "device"), ("save_embeddings", True, "save_embeddings"),
           ("filters", {"min_length": 300, "max_n_fraction": 1.0}, "filters")]


@pytest.mark.parametrize("key, value, named", CHANGES, ids=[key for key, _, _ in CHANGES])
def test_a_resume_with_any_result_setting_changed_is_refused_naming_it(tmp_path, key, value, named):
    """Each key listed here by hand (not read from RESULT_KEYS, which a mistake could shorten):
    another `filter.min_length` or `chunk_length` is another run, refused in one line that names it."""
    folder = RunFolder(tmp_path)
    folder.check_usable()
    folder.write_run_record(RECORD)
    assert folder.holds_same_run(json.loads(json.dumps(RECORD)), None, force=False)
    with pytest.raises(InputError, match=rf"^{tmp_path}: holds a run with different {named}; rerun with force=true"):
        folder.holds_same_run({**RECORD, key: value}, None, force=False)
    assert not folder.holds_same_run({**RECORD, key: value}, None, force=True)


def test_a_changed_model_is_named_before_the_keys(tmp_path):
    pack = ModelPack("tiny", 300, "dnabert", "esm.pt", None, "classifier.pth", 48, 64)
    folder = RunFolder(tmp_path)
    folder.check_usable()
    folder.write_run_record(RECORD)
    changed = {**RECORD, "models": {**RECORD["models"], "esm": "e2"}, "pack": "p2", "chunk_length": 500}
    with pytest.raises(InputError, match=r"the esm model esm.pt is not the one the run there used \(it was e, "
                                         r"it is now e2\); rerun with force=true"):
        folder.holds_same_run(changed, pack, force=False)
    assert differences(RECORD, changed) == ["models", "chunk_length"]  # the pack follows from the model


def test_only_a_new_empty_or_vnp_folder_is_used(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    for name in ("a", "b", "c", "d", "e", "f", "g"):
        (foreign / name).write_text("")
    with pytest.raises(InputError, match=rf"^{foreign}: the output folder is not empty and not one vnp made \(it "
                                         r"holds 'a', 'b', 'c', 'd', 'e' and 2 more\); choose a new or empty folder$"):
        RunFolder(foreign).check_usable()
    assert sorted(p.name for p in foreign.iterdir()) == list("abcdefg")  # nothing written there
    for out in (tmp_path / "new", tmp_path / "empty"):
        out.parent.mkdir(exist_ok=True)
        if out.name == "empty":
            out.mkdir()
        with RunFolder(out) as folder:
            folder.check_usable()
            assert folder.work.is_dir() and not folder.locked
            folder.lock()
            assert folder.locked is True and folder.is_vnp_folder()
            (out / "notes.txt").write_text("")
        RunFolder(out).check_usable()  # vnp's own folder, whatever else it holds


def test_forgetting_a_run_record_twice_is_fine(tmp_path):
    folder = RunFolder(tmp_path)
    folder.check_usable()
    folder.forget_run_record()
    folder.write_run_record(RECORD)
    folder.forget_run_record()
    folder.forget_run_record()
    assert folder.read_run_record() is None


def test_a_resumed_run_keeps_the_unit_size_of_its_record():
    old = {**RECORD, "unit_chunks": 6}
    assert keep_unit_size({**RECORD, "unit_chunks": 4}, old, configured=0)["unit_chunks"] == 6
    assert keep_unit_size({**RECORD, "unit_chunks": 4}, old, configured=4)["unit_chunks"] == 4  # asked for
    other = {**RECORD, "unit_chunks": 4, "chunk_length": 500}  # another run anyway: nothing kept
    assert keep_unit_size(other, old, configured=0) == other
    assert keep_unit_size(other, None, configured=0) == other
    assert keep_unit_size(other, {**old, "unit_chunks": "6"}, configured=0) == other


def test_the_run_description_travels_through_the_ready_file_unchanged(tmp_path):
    pack = ModelPack("tiny", 300, "dnabert", "esm.pt", None, "classifier", 48, 64)
    spec = RunSpec(pack, 300, "fp32", 2, (1, 3, 4), {"unit_chunks": 2, "filters": {}}, ({"path": "a", "records": 2},),
                   resumed_units=2, rejected_parts=1)
    folder = RunFolder(tmp_path)
    folder.check_usable()
    folder.write_json(folder.ready("n"), spec.to_ready())
    assert RunSpec.from_ready(folder.read_json(folder.ready("n")), [1, 3, 4]) == spec
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.unit_chunks = 4


def test_a_foreign_entry_with_a_line_break_in_its_name_is_shown_escaped(tmp_path):
    """Names are shown as Python writes them, printable letters as they are (café), others escaped."""
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    for name in ("bad\nname", "café", "tab\tx"):
        (foreign / name).write_text("")
    with pytest.raises(InputError) as err:
        RunFolder(foreign).check_usable()
    assert "holds 'bad\\nname', 'café', 'tab\\tx')" in str(err.value) and "\n" not in str(err.value)


def test_clearing_progress_removes_emptied_folders_and_keeps_any_other(tmp_path):
    """A fresh run clears the previous one's parts: parts/ goes once empty, a missing embeddings/ is
    no error, and a folder still holding another file stays with it."""
    folder = RunFolder(tmp_path)
    folder.check_usable()
    part = "part-000001-0123456789abcdef0123456789abcdef.npz"
    folder.parts.mkdir()
    (folder.parts / part).write_text("")
    folder.clear_progress()
    assert not folder.parts.exists() and not folder.embeddings.exists()
    folder.embeddings.mkdir()
    (folder.embeddings / part).write_text("")
    (folder.embeddings / "notes.txt").write_text("mine")
    folder.clear_progress()
    assert [path.name for path in folder.embeddings.iterdir()] == ["notes.txt"]
