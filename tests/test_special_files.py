"""Paths are checked before they are opened: a FIFO, a device, a system folder or a file name with a
control character as a model, pack, input or config is refused in one line and never blocks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT, child_env, copy_folder, error_lines
from vnp.models.classifier import load_classifier
from vnp.models.pack import load_pack, model_digests
from vnp.support.errors import InputError

pytestmark = pytest.mark.usefixtures("private_digest_cache")


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def test_a_fifo_as_a_model_file_is_refused_not_read(tiny_pack, tmp_path, no_hang):
    from vnp.models.esm import load_esm

    pack = load_pack(str(tiny_pack))
    pack.esm = str(fifo(tmp_path / "esm.pt"))
    with pytest.raises(InputError, match=r"esm.pt: ESM checkpoint is a FIFO \(named pipe\), not a regular file"):
        model_digests(pack)
    with pytest.raises(InputError, match="is a FIFO"):
        load_esm(pack.esm)
    folder = tmp_path / "classifier"
    folder.mkdir()
    fifo(folder / "classifier.safetensors")
    (folder / "classifier.json").write_text("{}")
    with pytest.raises(InputError, match="classifier.safetensors: classifier file is a FIFO"):
        load_classifier(folder)
    with pytest.raises(InputError, match="classifier checkpoint is a FIFO"):
        load_classifier(fifo(tmp_path / "model.pth"))


def test_a_fifo_in_a_model_folder_is_refused(tiny_pack, tmp_path, no_hang):
    dnabert = tmp_path / "dnabert"
    copy_folder(tiny_pack / "dnabert", dnabert)
    (dnabert / "config.json").unlink()
    fifo(dnabert / "config.json")
    pack = load_pack(str(tiny_pack))
    pack.dnabert = str(dnabert)
    with pytest.raises(InputError, match="config.json: DNABERT model file is a FIFO"):
        model_digests(pack)


@pytest.mark.parametrize("folder", ["/usr", "/proc/self"])
def test_a_system_folder_as_a_model_is_refused_quickly(tiny_pack, folder, no_hang):
    if not Path(folder).is_dir():
        pytest.skip(f"no {folder} here")
    for role in ("dnabert", "classifier"):
        pack = load_pack(str(tiny_pack))
        setattr(pack, role, folder)
        with pytest.raises(InputError, match=f"^{folder}"):
            model_digests(pack)


def test_a_pipe_or_device_as_input_or_config_is_not_a_regular_file(tmp_path, no_hang):
    from vnp.run.plan import check_inputs
    from vnp.support.config import load_config

    pipe = fifo(tmp_path / "reads.fa")
    with pytest.raises(InputError, match=r"reads.fa: is a FIFO \(named pipe\), not a regular file; save the input"):
        check_inputs([str(pipe)])
    with pytest.raises(InputError, match="/dev/null: is a device, not a regular file"):
        check_inputs(["/dev/null"])
    with pytest.raises(InputError, match="reads.fa: config file is a FIFO"):
        load_config(str(pipe), [])


@pytest.mark.slow
def test_a_fifo_in_a_pack_ends_the_run_with_one_line(tiny_pack, tmp_path):
    pack = tmp_path / "pack"
    pack.mkdir()
    (pack / "pack.yaml").write_text((tiny_pack / "pack.yaml").read_text())
    for name in ("dnabert", "classifier"):
        (pack / name).symlink_to(tiny_pack / name)
    fifo(pack / "esm2_tiny.pt")
    fasta = tmp_path / "in.fa"
    fasta.write_text(">s1\n" + "ATGGCC" * 50 + "\n")
    proc = subprocess.run([sys.executable, "-m", "vnp.predict", str(fasta), "-o", str(tmp_path / "out"),
                           f"pack={pack}", "progress=false", "threads=1"],
                          env=child_env(), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and error_lines(proc.stderr) == [proc.stderr.strip()], proc.stderr
    assert "esm2_tiny.pt: ESM checkpoint is a FIFO" in proc.stderr


def test_a_fifo_as_pack_is_refused(tmp_path, no_hang):
    with pytest.raises(InputError, match="pack.yaml: model pack is a FIFO"):
        load_pack(str(fifo(tmp_path / "pack.yaml")))
    folder = tmp_path / "folder"
    folder.mkdir()
    fifo(folder / "pack.yaml")
    with pytest.raises(InputError, match="folder/pack.yaml: model pack is a FIFO"):
        load_pack(str(folder))


def test_a_file_name_with_a_control_character_is_refused_escaped(tmp_path):
    from vnp.run.plan import check_inputs

    path = tmp_path / "evil\x1b[2Jname.fa"
    path.write_text(">s\nACGT\n")
    with pytest.raises(InputError) as caught:
        check_inputs([str(path)])
    assert "\x1b" not in str(caught.value) and "the file name contains the control character U+001B" in str(caught.value)
