"""Model files that are damaged, of the wrong kind or that describe a huge model are refused in one line,
before anything large is allocated."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch

from tests.helpers import TINY_DIM, ROOT, child_env, copy_folder, tables
from vnp.models.classifier import MLPClassifier, load_classifier
from vnp.models.pack import load_pack
from vnp.support.errors import InputError

pytestmark = pytest.mark.usefixtures("private_digest_cache")


@pytest.mark.parametrize("key, value, expected", [
    ("chunk_length", "abc", "key 'chunk_length': Value 'abc' of type 'str' could not be converted to Integer"),
    ("dnabert_dim", "abc", "key 'dnabert_dim': Value 'abc'"),
    ("chunk_length", "0", "chunk_length must be at least 3 (one codon), got 0"),
    ("chunk_length", "-500", "chunk_length must be at least 3"),
    ("chunk_length", "2", "chunk_length must be at least 3"),
    ("esm_dim", "0", "esm_dim must be positive"),
    ("esm_layer", "-1", "esm_layer must be >= 0"),
])
def test_every_pack_field_is_type_checked(tiny_pack, tmp_path, key, value, expected):
    lines = [f"{key}: {value}" if line.startswith(key + ":") else line
             for line in (tiny_pack / "pack.yaml").read_text().splitlines()]
    (tmp_path / "pack.yaml").write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=re.escape(expected)):
        load_pack(str(tmp_path / "pack.yaml"))


@pytest.mark.parametrize("config, expected", [
    ('{"input_dim": Infinity, "hidden_dim": 16, "num_class": 2}', "Infinity is not valid JSON"),
    ('{"input_dim": 112, "hidden_dim": 1e400, "num_class": 2}', "hidden_dim must be a positive integer"),
    ('{"input_dim": 112, "hidden_dim": -16, "num_class": 2}', "hidden_dim must be a positive integer, got -16"),
    ('{"input_dim": 112, "hidden_dim": 16}', "missing key 'num_class'"),
    ('[1, 2]', "expected a JSON object"),
])
def test_a_bad_classifier_json_is_one_line(tiny_pack, tmp_path, config, expected):
    folder = tmp_path / "classifier"
    copy_folder(tiny_pack / "classifier", folder)
    (folder / "classifier.json").write_text(config)
    with pytest.raises(InputError, match=re.escape(expected)):
        load_classifier(folder)


@pytest.mark.parametrize("content", [b"hello, this is a text file\n" * 5, b"\x80\x02]q\x00(K\x01e.", b"x"])
def test_a_text_or_garbage_file_as_classifier_is_one_line(tmp_path, content):
    path = tmp_path / "model.pth"
    path.write_bytes(content)
    with pytest.raises(InputError, match="model.pth: (not a readable classifier checkpoint|expected a pickled)"):
        load_classifier(path)


def test_a_classifier_of_stride_0_views_is_refused_before_allocating(tmp_path):
    """A few kB whose tensors claim a 4M-wide (or 10^12-wide) hidden layer."""
    for hidden in (4_000_000, 10**12):
        state = {"hidden_layer.weight": torch.zeros(1).expand(hidden, TINY_DIM),
                 "hidden_layer.bias": torch.zeros(1).expand(hidden),
                 "bn1.weight": torch.zeros(1).expand(hidden), "bn1.bias": torch.zeros(1).expand(hidden),
                 "bn1.running_mean": torch.zeros(1).expand(hidden), "bn1.running_var": torch.zeros(1).expand(hidden),
                 "bn1.num_batches_tracked": torch.tensor(0),
                 "output_layer.weight": torch.zeros(1).expand(2, hidden), "output_layer.bias": torch.zeros(2)}
        path = tmp_path / f"bomb{hidden}.pth"
        torch.save(state, path)
        assert path.stat().st_size < 10_000
        with pytest.raises(InputError, match=r"bomb\d+.pth: hidden_layer.weight claims shape .* more than the file"):
            load_classifier(path, input_dim=TINY_DIM)


def test_a_classifier_of_another_width_is_refused_before_allocating(tmp_path):
    path = tmp_path / "wide.pth"
    torch.save(MLPClassifier(TINY_DIM + 1, 8, 2).state_dict(), path)
    with pytest.raises(InputError, match=f"classifier expects {TINY_DIM + 1} features, not {TINY_DIM}"):
        load_classifier(path, input_dim=TINY_DIM)


@pytest.mark.slow
def test_force_with_a_corrupt_model_keeps_the_finished_results(tiny_pack, tmp_path):
    fasta = tmp_path / "in.fa"
    fasta.write_text("".join(f">s{i}\n" + "ATGGCCAAAGGCTTC" * 20 + "\n" for i in range(4)))
    out = tmp_path / "out"
    args = [sys.executable, "-m", "vnp.predict", str(fasta), "-o", str(out), "progress=false", "threads=1"]
    first = subprocess.run([*args, f"pack={tiny_pack}"], env=child_env(), cwd=ROOT, capture_output=True, text=True,
                           timeout=120)
    assert first.returncode == 0, first.stderr
    kept = {name: (out / name).read_bytes() for name in ("run.json", "config.yaml")} | tables(out)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "pack.yaml").write_text((tiny_pack / "pack.yaml").read_text())
    for name in ("dnabert", "classifier"):
        (broken / name).symlink_to(tiny_pack / name)
    (broken / "esm2_tiny.pt").write_bytes((tiny_pack / "esm2_tiny.pt").read_bytes()[:5000])  # loads on every rank
    proc = subprocess.run([*args, f"pack={broken}", "force=true"], env=child_env(), cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "esm2_tiny.pt" in proc.stderr, proc.stderr
    assert kept == {name: (out / name).read_bytes() for name in ("run.json", "config.yaml")} | tables(out)
    assert list((out / "work" / "parts").glob("part-*.npz"))  # the finished run's progress too


def test_an_esm_checkpoint_of_stride_0_views_is_refused(tmp_path):
    from vnp.models.esm import load_esm

    path = tmp_path / "esm2_bomb.pt"
    torch.save({"model": {"encoder.embed_tokens.weight": torch.zeros(1).expand(10**9, 2560)}, "cfg": {}}, path)
    with pytest.raises(InputError, match=r"esm2_bomb.pt: model.encoder.embed_tokens.weight claims shape"):
        load_esm(path)


@pytest.mark.parametrize("key, value", [("hidden_size", 400_000), ("alibi_starting_size", 10**6),
                                        ("num_hidden_layers", 10**9)])
def test_a_dnabert_config_describing_a_huge_model_is_refused_before_building(tiny_pack, tmp_path, key, value):
    from vnp.models.dnabert import load_dnabert

    folder = tmp_path / "dnabert"
    copy_folder(tiny_pack / "dnabert", folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, key: value}))
    with pytest.raises(InputError, match=r"dnabert/config.json: describes a model of \d+ MiB, far more than its "):
        load_dnabert(str(folder))
