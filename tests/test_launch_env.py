"""The launcher's variables and the device settings: a bad RANK, WORLD_SIZE, SLURM_* or thread count,
or gpus without CUDA, is one line from every command; OUT's logs and lock must be what vnp expects."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import one_error_line
from vnp.cli import main as vnp_main
from vnp.support.errors import InputError


@pytest.mark.parametrize("environ, expected", [
    ({"RANK": "abc", "WORLD_SIZE": "2"}, "launcher variable RANK='abc': not an integer"),
    ({"RANK": "1", "WORLD_SIZE": "1"}, "RANK=1 must be below WORLD_SIZE=1"),
    ({"RANK": "0"}, "RANK is set without WORLD_SIZE"),
    ({"RANK": "0", "WORLD_SIZE": "0"}, "WORLD_SIZE=0: must be at least 1"),
    ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "x"}, "LOCAL_RANK='x': not an integer"),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "abc"}, "SLURM_NTASKS='abc': not an integer"),
    ({"SLURM_PROCID": "1"}, "SLURM_PROCID is set without SLURM_NTASKS"),
    ({"SLURM_PROCID": "2", "SLURM_NTASKS": "2"}, "SLURM_PROCID=2 must be below SLURM_NTASKS=2"),
])
def test_bad_launcher_variables_are_named(environ, expected):
    from vnp.run.dist import detect_env

    with pytest.raises(InputError, match=expected.replace("(", r"\(")):
        detect_env(environ)


def test_good_launcher_variables_still_work():
    from vnp.run.dist import detect_env

    assert detect_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}).rank == 1
    assert detect_env({"SLURM_PROCID": "0"}).launcher == "single"  # a batch step's own shell
    assert detect_env({"SLURM_NTASKS": "4"}).launcher == "single"  # an salloc shell
    assert detect_env({"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_TASKS_PER_NODE": "2"}).world_size == 2


@pytest.mark.parametrize("environ", [{"RANK": "abc", "WORLD_SIZE": "2"}, {"SLURM_PROCID": "1"}])
def test_bad_launcher_variables_give_one_line_from_the_command(environ, tmp_path, monkeypatch, capsys):
    fasta = tmp_path / "in.fa"
    fasta.write_text(">s1\nACGT\n")
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert vnp_main(["predict", str(fasta), "-o", str(tmp_path / "out"), "pack=tiny"]) == 2
    one_error_line(capsys.readouterr().err, "launcher variable" if "RANK" in environ else "SLURM_PROCID")


@pytest.mark.parametrize("command", ["embed", "train"])
def test_bad_launcher_variables_give_one_line_from_vnp_embed_and_train(tmp_path, command, monkeypatch, capsys):
    fasta = tmp_path / "in.fa"
    fasta.write_text(">s1\nACGT\n")
    (tmp_path / "m.tsv").write_text(f"{fasta}\tvirus\n")
    args = {"embed": ["dnabert", str(fasta), "-m", "x", "-o", str(tmp_path / "e.npz")],
            "train": [str(tmp_path / "m.tsv"), "-o", str(tmp_path / "trained")]}[command]
    monkeypatch.setenv("RANK", "abc")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert vnp_main([command, *args]) == 2
    assert capsys.readouterr().err.strip() == "vnp: error: launcher variable RANK='abc': not an integer"


def test_more_threads_than_cores_is_refused_where_the_rank_runs():
    """A config may come from a bigger machine (`vnp call`, `vnp report` read it anywhere): the
    rank's own cores bound `threads` only when it runs."""
    from vnp.run.dist import Env, set_cpu_threads
    from vnp.support.config import load_config, usable_cores

    config = load_config(None, [f"threads={usable_cores() + 1}"])  # valid as a setting
    with pytest.raises(InputError, match=f"threads={usable_cores() + 1}: this rank may use only"):
        set_cpu_threads(config.threads, Env(0, 0, 1, 1, "single"))


def test_gpus_without_cuda_is_refused(tmp_path, capsys):
    from vnp.predict import main as predict_main

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    fasta = tmp_path / "in.fa"
    fasta.write_text(">s1\nACGT\n")
    assert predict_main(["--gpus", "0,1", str(fasta), "-o", str(tmp_path / "out"), "pack=tiny"]) == 2
    assert capsys.readouterr().err == "vnp: error: --gpus 0,1: CUDA is not available on this machine " \
                                      "(device=cpu runs that many CPU ranks)\n"
    assert not (tmp_path / "out").exists()


def test_out_logs_a_file_or_lock_a_folder_is_one_line(tmp_path):
    from vnp.run.folder import RunFolder
    from vnp.run.lifecycle import open_log

    out = tmp_path / "out"
    (out / "work").mkdir(parents=True)
    (out / "logs").write_text("not a folder")
    with pytest.raises(InputError, match=r"out/logs: exists and is not a folder \(the per-rank logs go there\)"):
        open_log(RunFolder(out), 0)
    (out / "work" / ".lock").mkdir()
    with pytest.raises(InputError, match=r"work/.lock: cannot open the lock file \(Is a directory\)"):
        RunFolder(out).lock()
