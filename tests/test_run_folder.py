"""The run folder object (every path in OUT, its lock, the run record) and the run description
rank 0 hands to the other ranks."""

import dataclasses
import json

import pytest

from vnp.support.errors import InputError
from vnp.models.pack import ModelPack
from vnp.run.folder import RunFolder
from vnp.run.state import RunSpec


def test_every_path_is_inside_out(tmp_path):
    folder = RunFolder(tmp_path / "out")
    paths = [folder.work, folder.parts, folder.embeddings, folder.log(3), folder.run_record_path, folder.index,
             folder.sequences, folder.ids, folder.config_yaml, folder.run_json, folder.report_html,
             folder.ready("n"), folder.remaining("n"), folder.heartbeat("n"), folder.stop_request("n"),
             folder.alive(2), folder.lock_path, folder.checkpoint, folder.train_log(0), folder.tiny_pack]
    assert all(path.is_relative_to(tmp_path / "out") for path in paths)
    assert len(set(paths)) == len(paths)
    assert folder.log(3) == tmp_path / "out" / "logs" / "rank3.log"
    assert folder.run_record_path == tmp_path / "out" / "work" / "record.json"


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
