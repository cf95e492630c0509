"""Model packs: the tiny pack is reproducible to the byte, packs resolve their paths, the built-in
packs name the published models, and `vnp pack convert` keeps the original classifier's scores."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import ORIGINAL_SCRIPT
from vnp.cli import main as vnp_main
from vnp.support.errors import InputError
from vnp.models.classifier import load_classifier, score
from vnp.models.dnabert import load_dnabert
from vnp.models.esm import load_esm
from vnp.models.pack import load_pack


def folder_bytes(folder: Path) -> dict[str, bytes]:
    """Every file under `folder`, by relative path."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny_packs(tmp_path_factory) -> dict[str, Path]:
    """`vnp pack tiny` run three times: seed 0 twice, seed 1 once."""
    root = tmp_path_factory.mktemp("packs")
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        assert vnp_main(["pack", "tiny", str(root / name), "--seed", str(seed)]) == 0
    return {name: root / name for name in "abc"}


def test_tiny_pack_is_byte_identical_for_a_seed(tiny_packs):
    a, b, c = (folder_bytes(tiny_packs[name]) for name in "abc")
    assert {"pack.yaml", "esm2_tiny.pt", "dnabert/model.safetensors", "dnabert/tokenizer.json",
            "dnabert/config.json", "classifier/classifier.safetensors", "classifier/classifier.json"} <= set(a)
    assert a == b
    assert set(c) == set(a)
    differing = {name for name in a if a[name] != c[name]}
    assert {"esm2_tiny.pt", "dnabert/model.safetensors", "classifier/classifier.safetensors"} <= differing


def test_load_pack_resolves_paths(tiny_packs, tmp_path):
    folder = tiny_packs["a"]
    for spec in (str(folder), str(folder / "pack.yaml")):
        pack = load_pack(spec)
        assert pack.name == "tiny" and pack.chunk_length == 500
        assert Path(pack.dnabert) == (folder / "dnabert").resolve()
        assert Path(pack.esm) == (folder / "esm2_tiny.pt").resolve()
        assert Path(pack.classifier) == (folder / "classifier").resolve()
    built = load_pack("tiny", tiny_dir=tmp_path / "tiny")  # seed 0, as `vnp pack tiny` by default
    assert Path(built.dnabert).is_dir() and Path(built.esm).is_file()
    assert folder_bytes(tmp_path / "tiny") == folder_bytes(folder)
    other = tmp_path / "other_classifier"
    assert load_pack(str(folder), classifier=str(other)).classifier == str(other.resolve())


def test_tiny_models_load_with_matching_dims(tiny_packs):
    pack = load_pack(str(tiny_packs["a"]))
    dnabert, esm = load_dnabert(pack.dnabert), load_esm(pack.esm, layer=pack.esm_layer)
    classifier = load_classifier(pack.classifier)
    assert dnabert.dim == pack.dnabert_dim and esm.dim == pack.esm_dim
    assert classifier.dims[0] == pack.dnabert_dim + pack.esm_dim == pack.embedding_dim
    features = np.concatenate([dnabert.embed(["ACGTTGCAAC" * 10]), esm.embed(["MKTAYIAKQR"])], axis=1)
    probs = score(classifier, torch.from_numpy(features))
    assert probs.shape == (1, 2) and torch.allclose(probs.sum(dim=1), torch.ones(1))


@pytest.mark.parametrize("name, chunk_length", [("500", 500), ("300", 300)])
def test_builtin_packs_name_the_published_models(tmp_path, name, chunk_length):
    classifier = tmp_path / f"{name}_model.pth"
    pack = load_pack(name, classifier=str(classifier))
    assert (pack.name, pack.chunk_length) == (name, chunk_length)
    assert pack.dnabert == "zhihan1996/DNABERT-S"
    assert pack.esm == "esm2_t36_3B_UR50D" and pack.esm_layer == 36
    assert (pack.dnabert_dim, pack.esm_dim, pack.embedding_dim) == (768, 2560, 3328)
    assert pack.classifier == str(classifier.resolve())
    with pytest.raises(InputError) as err:
        load_pack(name)
    assert "classifier=" in str(err.value) and "\n" not in str(err.value)


def test_unknown_pack_is_refused(tmp_path):
    with pytest.raises(InputError, match="not a built-in pack"):
        load_pack(str(tmp_path / "nowhere"))


def test_convert_keeps_the_original_scores(tmp_path, capsys):
    input_dim = 12
    (tmp_path / "train.py").write_text(ORIGINAL_SCRIPT)  # the original's torch.save(model)
    subprocess.run([sys.executable, "train.py", str(input_dim)], cwd=tmp_path, check=True)
    legacy = tmp_path / "model.pth"
    x, expected = np.load(tmp_path / "x.npy"), np.load(tmp_path / "expected.npy")
    out = tmp_path / "converted"
    assert vnp_main(["pack", "convert", "--classifier", str(legacy), "-o", str(out)]) == 0
    converted = load_classifier(out)
    assert converted.dims == (input_dim, 8, 2)
    got = score(converted, torch.from_numpy(x))
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-6, rtol=0)
    assert torch.equal(got, score(load_classifier(legacy), torch.from_numpy(x)))

    capsys.readouterr()
    assert vnp_main(["pack", "convert", "--classifier", str(tmp_path / "missing.pth"), "-o", str(out)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
