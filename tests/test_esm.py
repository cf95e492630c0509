"""ESM2 embeddings on a tiny random ESM2 checkpoint written in fair-esm's own file format."""

import argparse
import pickle
import urllib.error

import numpy as np
import pytest
import torch

from vnp.support.errors import InputError
from vnp.models.batches import token_batches
from vnp.models.esm import MAX_RESIDUES, build_tiny_esm, load_esm

# Mixed lengths so that token batches pad; X (unknown residue) and <mask> (token dropout rescaling).
PROTEINS = [
    "MKTAYIAKQRQISFVKSHFSRQ",
    "M",
    "ACDEFGHIKLMNPQRSTVWY",
    "MXXKLVXAG",
    "MSTNPKPQRKTKRNTNRRPQDVKFPGG" * 3,
    "GAVLIMFWP",
    "MK<mask>LLAG<mask>KE",
    "QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ",
]
SMALL_BUDGET = 120  # several batches, most of them padded


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_tiny_esm(tmp_path_factory.mktemp("esm") / "esm2_tiny.pt", seed=0)


@pytest.fixture(scope="module")
def reference(checkpoint):
    return load_esm(checkpoint, attention="fair-esm")


def one_per_call(embedder, proteins, layer):
    """The original VirNucPro pattern: one protein per forward, mean of t[0, 1 : len + 1]."""
    convert = embedder.alphabet.get_batch_converter()
    rows = []
    with torch.no_grad():
        for protein in proteins:
            _, _, tokens = convert([("id", protein)])
            reps = embedder.model(tokens, repr_layers=[layer])["representations"][layer]
            n = tokens.shape[1] - 2  # residues (a <mask> is one token)
            rows.append(reps[0, 1 : n + 1].mean(0).numpy())
    return np.stack(rows)


def test_padded_batches_equal_one_protein_per_call(reference):
    lengths = reference.token_lengths(PROTEINS)
    batches = token_batches(lengths, SMALL_BUDGET)
    assert any(len({lengths[i] for i in batch}) > 1 for batch in batches), "no padded batch"
    got = reference.embed(PROTEINS, max_tokens=SMALL_BUDGET)
    assert got.dtype == np.float32 and got.shape == (len(PROTEINS), 64)
    np.testing.assert_allclose(got, one_per_call(reference, PROTEINS, 2), atol=1e-5, rtol=0)


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_sdpa_matches_fair_esm(checkpoint, layer):
    fair = load_esm(checkpoint, layer=layer, attention="fair-esm").embed(PROTEINS, max_tokens=SMALL_BUDGET)
    sdpa = load_esm(checkpoint, layer=layer, attention="sdpa").embed(PROTEINS, max_tokens=SMALL_BUDGET)
    assert np.abs(sdpa - fair).max() < 1e-5


def test_sdpa_unpadded_batch_matches(checkpoint, reference):
    same_length = ["MKTAYIAKQR", "ACDEFGHIKL", "XXXXXKQRST"]
    sdpa = load_esm(checkpoint).embed(same_length)
    assert np.abs(sdpa - reference.embed(same_length)).max() < 1e-5


def test_layer_selection(checkpoint, reference):
    first = load_esm(checkpoint, layer=1, attention="fair-esm")
    assert first.layer == 1 and reference.layer == reference.num_layers == 2
    got = first.embed(PROTEINS, max_tokens=SMALL_BUDGET)
    np.testing.assert_allclose(got, one_per_call(first, PROTEINS, 1), atol=1e-5, rtol=0)
    assert np.abs(got - reference.embed(PROTEINS)).max() > 1e-2


@pytest.mark.parametrize("layer", [-1, 3])
def test_out_of_range_layer(checkpoint, layer):
    with pytest.raises(InputError, match="layer"):
        load_esm(checkpoint, layer=layer)


def test_namespace_checkpoint_leaves_torch_settings_alone(checkpoint):
    before = set(torch.serialization.get_safe_globals())  # torch keeps a set; list order varies
    load_esm(checkpoint)
    assert set(torch.serialization.get_safe_globals()) == before
    with pytest.raises(pickle.UnpicklingError):  # Namespace is still not allowed outside load_esm
        torch.load(checkpoint, weights_only=True)
    # Someone who allowed Namespace themselves keeps it allowed.
    with torch.serialization.safe_globals([argparse.Namespace]):
        load_esm(checkpoint)
        assert argparse.Namespace in torch.serialization.get_safe_globals()


def test_corrupt_and_missing_files(checkpoint, tmp_path):
    truncated = tmp_path / "esm2_cut.pt"
    truncated.write_bytes(checkpoint.read_bytes()[:5000])
    garbage = tmp_path / "esm2_garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    for bad in (truncated, garbage, tmp_path / "esm2_missing.pt"):
        with pytest.raises(InputError) as err:
            load_esm(bad)
        assert bad.name in str(err.value) and "\n" not in str(err.value)


def test_checkpoint_with_foreign_global_is_refused(tmp_path):
    evil = tmp_path / "esm2_evil.pt"
    torch.save({"model": {}, "cfg": {"model": argparse.ArgumentParser}}, evil)
    with pytest.raises(InputError, match="refusing to load: it references argparse.ArgumentParser"):
        load_esm(evil)


def test_not_an_esm2_dict(tmp_path):
    plain = tmp_path / "weights.pt"
    torch.save({"a": torch.zeros(2)}, plain)
    with pytest.raises(InputError, match="not an ESM2 checkpoint"):
        load_esm(plain)


def test_tiny_checkpoint_is_deterministic(tmp_path):
    rng_before = torch.random.get_rng_state()
    a = build_tiny_esm(tmp_path / "a" / "esm2_tiny.pt", seed=3)
    b = build_tiny_esm(tmp_path / "b" / "esm2_tiny.pt", seed=3)
    c = build_tiny_esm(tmp_path / "c" / "esm2_tiny.pt", seed=4)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    assert torch.equal(torch.random.get_rng_state(), rng_before)


def test_tiny_checkpoint_has_fair_esm_layout(checkpoint):
    with torch.serialization.safe_globals([argparse.Namespace]):
        data = torch.load(checkpoint, weights_only=True)
    cfg = data["cfg"]["model"]
    assert (cfg.encoder_layers, cfg.encoder_embed_dim, cfg.encoder_attention_heads) == (2, 64, 4)
    assert "encoder.sentence_encoder.embed_tokens.weight" in data["model"]
    assert "encoder.lm_head.dense.weight" in data["model"]
    assert not any("contact_head" in key for key in data["model"])


def test_named_model_from_hub_cache(checkpoint, tmp_path, monkeypatch):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "esm2_tiny.pt").write_bytes(checkpoint.read_bytes())
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    assert load_esm("esm2_tiny").dim == 64


def test_named_model_download_failure(tmp_path, monkeypatch):
    def offline(url, dst, progress=True):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(InputError, match="esm2_t36_3B_UR50D.pt failed"):
        load_esm("esm2_t36_3B_UR50D")


def test_tokens_match_fair_esm_batch_converter(reference):
    proteins = PROTEINS + ["A" * (MAX_RESIDUES + 40)]
    _, _, expected = reference.alphabet.get_batch_converter(MAX_RESIDUES)([("id", p) for p in proteins])
    tokens, residues = reference._batch_tokens([reference.encode(p) for p in proteins])
    assert torch.equal(tokens, expected)
    assert residues[-1] == MAX_RESIDUES
    assert reference.token_lengths(proteins)[-1] == MAX_RESIDUES + 2


def test_unknown_residue_is_a_clear_error(reference):
    with pytest.raises(ValueError, match=r"'\*' is not in the ESM alphabet"):
        reference.embed(["MKT*"])


def test_token_batches_respect_budget():
    lengths = [12, 5, 40, 7, 7, 100, 3, 12]
    batches = token_batches(lengths, max_tokens=30)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) == 1 or max(lengths[i] for i in batch) * len(batch) <= 30
    assert [lengths[i] for batch in batches for i in batch] == sorted(lengths, reverse=True)  # longest first


def test_empty_input(reference):
    assert reference.embed([]).shape == (0, 64)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("attention", ["sdpa", "fair-esm"])
def test_half_precision_runs(checkpoint, reference, dtype, attention):
    got = load_esm(checkpoint, dtype=dtype, attention=attention).embed(PROTEINS)
    assert got.dtype == np.float32 and np.isfinite(got).all()
    assert np.abs(got - reference.embed(PROTEINS)).max() < 0.2
