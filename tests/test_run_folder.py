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
from vnp.run.folder import RunFolder, TrainingFolder
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
