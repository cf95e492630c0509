"""What commands say about output folders that are not what they should be: a finished run whose
run.json is gone (`vnp call`), an OUT that is a symbolic link to nothing (`vnp predict`, `vnp
translate`), an OUT that is a file."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import one_error_line, write_mixed_input
from vnp.call import main as call_main
from vnp.predict import main as predict_main
from vnp.translate import main as translate_main

COMMON = ["pack=tiny", "progress=false", "batch.unit_chunks=4", "dist.timeout_s=60"]


def one_line(capsys, message: str) -> str:
    return one_error_line(capsys.readouterr().err, message)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("finished")
    fasta = write_mixed_input(folder / "in.fa")
    assert predict_main([str(fasta), "-o", str(folder / "out"), *COMMON]) == 0
    return folder / "out"


def test_call_on_a_finished_run_without_run_json(finished, capsys):
    """It said "the run is unfinished (1 of 1 work units committed)"."""
    (finished / "run.json").rename(finished / "run.json.away")
    try:
        assert call_main([str(finished), "call.min_score=0.9"]) == 2
        line = one_line(capsys, "no run.json, though all")
        assert "unfinished" not in line
    finally:
        (finished / "run.json.away").rename(finished / "run.json")


def test_predict_into_a_broken_symbolic_link(tmp_path, capsys):
    """It said "cannot create output folder (File exists)"."""
    fasta = write_mixed_input(tmp_path / "in.fa")
    out = tmp_path / "out"
    out.symlink_to(tmp_path / "gone")
    assert predict_main([str(fasta), "-o", str(out), *COMMON]) == 2
    one_line(capsys, "out: output folder is a broken symbolic link (to ")
    assert out.is_symlink() and not (tmp_path / "gone").exists()


@pytest.mark.parametrize("kind, message", [("dangling", "is a broken symbolic link"),
                                           ("file", "output folder is an existing file")])
def test_translate_into_what_cannot_be_a_folder(tmp_path, capsys, kind, message):
    fasta = write_mixed_input(tmp_path / "in.fa")
    out = tmp_path / "out"
    if kind == "dangling":
        out.symlink_to(tmp_path / "gone")
    else:
        out.write_text("keep")
    assert translate_main([str(fasta), "-o", str(out)]) == 2
    one_line(capsys, message)
