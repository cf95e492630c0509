"""DNABERT-S: ALiBi, padding equivalence, checkpoint loading, tokenizer, tiny build."""

from __future__ import annotations

import json
import math
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from vnp.support.errors import InputError
from vnp.models.batches import token_batches
from vnp.models.dnabert import (
    DnabertConfig,
    DnabertEmbedder,
    DnabertModel,
    alibi_slopes,
    attention_bias,
    build_tiny_dnabert,
    load_dnabert,
    load_tokenizer,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REAL = SHARED / "reference" / "dnabert-s"
needs_shared = pytest.mark.skipif(not (REAL / "config.json").is_file(),
                                  reason="shared reference files absent")

# varied lengths, lower case and N; "" is just [CLS] [SEP]
SEQS = ["ACGTTGCA" * 40, "acgtnnnnacgtTTGACC", "", "N" * 7, "GATTACA" * 90, "TTTTAAAACCCCGGGG",
        "ACGT" * 13 + "n"]


def random_dna(rng: random.Random, length: int) -> str:
    return "".join(rng.choices("ACGT", k=length))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_dnabert(tmp_path_factory.mktemp("tiny"), seed=0)


@pytest.fixture(scope="module")
def tiny(tiny_dir) -> DnabertEmbedder:
    return load_dnabert(str(tiny_dir))


def clone_folder(src: Path, dst: Path, weights: dict[str, torch.Tensor], name: str) -> Path:
    """A model folder with src's config/tokenizer and the given weights under `name`."""
    dst.mkdir()
    for f in ("config.json", "tokenizer.json"):
        shutil.copy(src / f, dst / f)
    if name.endswith(".safetensors"):
        save_file(weights, str(dst / name))
    else:
        torch.save(weights, dst / name)
    return dst


# ----------------------------------------------------------------------------- ALiBi


def test_alibi_slopes_by_hand():
    # 8 heads: start = ratio = 2^(-8/8)
    assert alibi_slopes(8) == pytest.approx([2.0 ** -k for k in range(1, 9)])
    # 12 heads: the 8-head slopes, then 16-head slopes 2^(-k/2) at k = 1, 3, 5, 7
    expected_12 = [2.0 ** -k for k in range(1, 9)] + [2.0 ** -0.5, 2.0 ** -1.5, 2.0 ** -2.5,
                                                       2.0 ** -3.5]
    assert alibi_slopes(12) == pytest.approx(expected_12, rel=1e-12)
    # 6 heads: 4-head slopes 2^(-2k), then 8-head slopes 2^-1, 2^-3
    assert alibi_slopes(6) == pytest.approx([2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8,
                                             2.0 ** -1, 2.0 ** -3], rel=1e-12)


def test_attention_bias_alibi_and_padding():
    mask = torch.tensor([[True, True, True], [True, True, False]])
    bias = attention_bias(mask, [0.5, 0.25], torch.float32)                  # (2, 2, 3, 3)
    assert bias.shape == (2, 2, 3, 3)
    assert bias[0, 0].tolist() == [[0, -0.5, -1.0], [-0.5, 0, -0.5], [-1.0, -0.5, 0]]
    assert bias[1, 1, 0, :2].tolist() == [0, -0.25]
    assert (bias[1, :, :, 2] == torch.finfo(torch.float32).min).all()      # padded key
    assert attention_bias(mask, [0.5], torch.bfloat16).dtype == torch.bfloat16


# ----------------------------------------------------------------------------- model math


def reference_hidden(sd: dict, cfg: DnabertConfig, ids: list[int]) -> torch.Tensor:
    """The original's math for one unpadded sequence, written out in float64: (T, H)."""
    hs, nh = cfg.hidden_size, cfg.num_attention_heads
    d, t = hs // nh, len(ids)

    def p(key: str) -> torch.Tensor:
        return sd["bert." + key].double()

    def ln(x: torch.Tensor, key: str) -> torch.Tensor:
        return F.layer_norm(x, (hs,), p(key + ".weight"), p(key + ".bias"), cfg.layer_norm_eps)

    x = p("embeddings.word_embeddings.weight")[ids]
    x = ln(x + p("embeddings.token_type_embeddings.weight")[0], "embeddings.LayerNorm")
    slopes = [2.0 ** (-8.0 * (i + 1) / nh) for i in range(nh)]  # nh is a power of 2 here
    dist = (torch.arange(t)[None, :] - torch.arange(t)[:, None]).abs().double()
    for n in range(cfg.num_hidden_layers):
        pre = f"encoder.layer.{n}."
        qkv = (x @ p(pre + "attention.self.Wqkv.weight").T + p(pre + "attention.self.Wqkv.bias"))
        qkv = qkv.view(t, 3, nh, d)
        heads = []
        for h in range(nh):
            q, k, v = qkv[:, 0, h], qkv[:, 1, h], qkv[:, 2, h]
            scores = q @ k.T / math.sqrt(d) - slopes[h] * dist
            heads.append(torch.softmax(scores, dim=-1) @ v)
        attn = torch.cat(heads, dim=-1) @ p(pre + "attention.output.dense.weight").T
        attn = attn + p(pre + "attention.output.dense.bias")
        x = ln(attn + x, pre + "attention.output.LayerNorm")
        inner = x @ p(pre + "mlp.gated_layers.weight").T
        gated, value = inner[:, : cfg.intermediate_size], inner[:, cfg.intermediate_size:]
        out = (F.gelu(gated) * value) @ p(pre + "mlp.wo.weight").T + p(pre + "mlp.wo.bias")
        x = ln(out + x, pre + "mlp.layernorm")
    return x


def test_model_matches_written_out_math(tiny, tiny_dir):
    sd = load_file(str(tiny_dir / "model.safetensors"))
    ids = tiny.tokenizer.encode("GATTACANACGT" * 9).ids
    with torch.inference_mode():
        ours = tiny.model(torch.tensor([ids]))[0]
    ref = reference_hidden(sd, tiny.model.config, ids)
    assert (ours.double() - ref).abs().max() < 1e-5


def test_padded_batch_equals_one_by_one(tiny):
    # the original's call pattern: tokenizer(seq) unpadded, model(input_ids)[0].mean(1)
    with torch.inference_mode():
        expected = np.stack([
            tiny.model(torch.tensor([tiny.tokenizer.encode(s.upper()).ids]))[0].mean(0).numpy()
            for s in SEQS])
    for max_tokens in (16384, 300, 1):  # one batch, several, one sequence each
        got = tiny.embed(SEQS, max_tokens=max_tokens)
        assert got.dtype == np.float32 and got.shape == (len(SEQS), tiny.dim)
        assert np.abs(got - expected).max() < 1e-5


def test_padded_rows_stay_finite(tiny):
    ids = torch.tensor([[1, 9, 10, 2], [1, 2, 3, 3], [3, 3, 3, 3]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]])  # last row: padding only
    with torch.inference_mode():
        assert torch.isfinite(tiny.model(ids, mask)).all()


def test_token_lengths_and_empty_input(tiny):
    lengths = tiny.token_lengths(SEQS)
    assert lengths[2] == 2                                      # [CLS] [SEP]
    assert lengths[3] == 9                                      # one [UNK] per N
    assert tiny.token_lengths(["acgt"]) == tiny.token_lengths(["ACGT"])
    assert tiny.embed([]).shape == (0, tiny.dim)


def test_token_batches_respect_budget():
    lengths = [5, 120, 30, 30, 7, 300, 1]
    batches = token_batches(lengths, max_tokens=128)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        padded = max(lengths[i] for i in batch) * len(batch)
        assert len(batch) == 1 or padded <= 128  # an item over the budget goes alone
    assert batches[0] == [5] and batches[1] == [1]              # longest first


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_close_to_fp32(tiny_dir, tiny, dtype):
    half = load_dnabert(str(tiny_dir), dtype=dtype)
    assert next(half.model.parameters()).dtype == dtype
    got, ref = half.embed(SEQS), tiny.embed(SEQS)
    assert got.dtype == np.float32 and np.isfinite(got).all()
    assert np.abs(got - ref).max() < 0.1
    cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > 0.999


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoint_key_variants_load_the_same(tiny_dir, tiny, tmp_path):
    prefixed = load_file(str(tiny_dir / "model.safetensors"))
    assert "bert.encoder.layer.0.mlp.gated_layers.weight" in prefixed
    bare = {k.removeprefix("bert."): v for k, v in prefixed.items()}
    with_head = dict(prefixed, **{"cls.predictions.bias": torch.zeros(3),
                                  "cls.predictions.transform.dense.weight": torch.ones(2, 2)})
    folders = [clone_folder(tiny_dir, tmp_path / "bare", bare, "model.safetensors"),
               clone_folder(tiny_dir, tmp_path / "bin", with_head, "pytorch_model.bin")]
    expected = tiny.embed(SEQS)
    for folder in folders:
        assert np.array_equal(load_dnabert(str(folder)).embed(SEQS), expected)


def test_checkpoint_key_errors(tiny_dir, tmp_path):
    weights = load_file(str(tiny_dir / "model.safetensors"))
    model = DnabertModel(DnabertConfig.from_json(tiny_dir / "config.json"))
    no_pooler = {k: v for k, v in weights.items() if not k.startswith("bert.pooler.")}
    model.load_checkpoint(no_pooler)                            # the pooler is optional
    missing = {k: v for k, v in weights.items() if k != "bert.encoder.layer.1.mlp.wo.weight"}
    with pytest.raises(ValueError, match="encoder.layer.1.mlp.wo.weight"):
        model.load_checkpoint(missing)
    with pytest.raises(ValueError, match="unexpected bogus.weight"):
        model.load_checkpoint(dict(weights, **{"bogus.weight": torch.zeros(1)}))
    wrong_shape = dict(weights, **{"bert.pooler.dense.bias": torch.zeros(5)})
    with pytest.raises(ValueError, match="shape"):
        model.load_checkpoint(wrong_shape)
    folder = clone_folder(tiny_dir, tmp_path / "missing", missing, "model.safetensors")
    with pytest.raises(InputError, match="mlp.wo.weight"):
        load_dnabert(str(folder))


def test_load_errors_are_input_errors(tiny_dir, tmp_path, monkeypatch):
    import huggingface_hub

    with pytest.raises(InputError, match="not a DNABERT model folder"):
        load_dnabert(str(tmp_path / "nowhere"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="config.json"):
        load_dnabert(str(empty))
    shutil.copy(tiny_dir / "config.json", empty)
    shutil.copy(tiny_dir / "tokenizer.json", empty)
    with pytest.raises(InputError, match="no checkpoint"):
        load_dnabert(str(empty))
    for name in ("model.safetensors", "pytorch_model.bin"):
        (empty / name).write_bytes(b"not a checkpoint")
        with pytest.raises(InputError, match="cannot read checkpoint"):
            load_dnabert(str(empty))
        (empty / name).unlink()

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(InputError, match="hub failed"):
        load_dnabert("zhihan1996/DNABERT-S")


def test_hub_id_downloads_then_falls_back_to_bin(tiny_dir, tmp_path, monkeypatch):
    import huggingface_hub

    snapshot = clone_folder(tiny_dir, tmp_path / "snap",
                            load_file(str(tiny_dir / "model.safetensors")), "pytorch_model.bin")
    calls = []

    def fake_download(repo_id, allow_patterns):
        calls.append(allow_patterns)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    assert load_dnabert("org/model").dim == 64
    assert calls == [["config.json", "tokenizer.json", "model.safetensors"], ["pytorch_model.bin"]]


# ----------------------------------------------------------------------------- config


def test_config_round_trip_and_validation():
    cfg = DnabertConfig(hidden_size=32, num_attention_heads=4, intermediate_size=8)
    assert DnabertConfig.from_dict({**cfg.to_dict(), "auto_map": {}}) == cfg
    with pytest.raises(ValueError, match="num_attention_heads"):
        DnabertConfig(hidden_size=30, num_attention_heads=4)


@needs_shared
def test_real_config_parameter_count():
    cfg = DnabertConfig.from_json(REAL / "config.json")
    assert (cfg.hidden_size, cfg.num_hidden_layers) == (768, 12)
    assert cfg.attention_probs_dropout_prob == 0.0
    with torch.device("meta"):  # shapes only: no 117M random init
        model = DnabertModel(cfg)
    assert sum(p.numel() for p in model.parameters()) == 117_068_544


@needs_shared
def test_real_tokenizer_lengths():
    tokenizer = load_tokenizer(REAL / "tokenizer.json")
    rng = random.Random(0)
    counts = [len(tokenizer.encode(random_dna(rng, 500)).ids) for _ in range(20)]
    assert 105 <= np.mean(counts) <= 115                        # ~110 tokens per 500 bp
    long_ids = tokenizer.encode(random_dna(rng, 15_000)).ids
    assert len(long_ids) > 2000                                 # stored truncation is off
    assert long_ids[0] == 1 and long_ids[-1] == 2 and 3 not in long_ids
    assert tokenizer.encode("ACNT").tokens == ["[CLS]", "A", "C", "[UNK]", "T", "[SEP]"]


# ----------------------------------------------------------------------------- tiny build


def test_tiny_build_is_deterministic(tiny_dir, tmp_path):
    names = ("config.json", "tokenizer.json", "model.safetensors")
    again = build_tiny_dnabert(tmp_path / "again", seed=0)
    # a fresh process too: hash seeds and thread pools must not leak into the files
    code = ("from vnp.models.dnabert import build_tiny_dnabert; "
            f"build_tiny_dnabert({str(tmp_path / 'proc')!r})")
    subprocess.run([sys.executable, "-c", code], check=True,
                   cwd=Path(__file__).resolve().parents[1])
    for folder in (again, tmp_path / "proc"):
        for name in names:
            assert (folder / name).read_bytes() == (tiny_dir / name).read_bytes(), name
    other = build_tiny_dnabert(tmp_path / "other", seed=1)
    weights = "model.safetensors"
    assert (other / weights).read_bytes() != (tiny_dir / weights).read_bytes()


def test_tiny_tokenizer_mirrors_real_layout(tiny_dir, tiny):
    tok = tiny.tokenizer
    assert [tok.id_to_token(i) for i in range(9)] == ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]",
                                                     "A", "C", "G", "T"]
    assert tok.get_vocab_size() == 400 and tok.truncation is None and tok.padding is None
    tokens = tok.encode("ACGTN").tokens
    assert tokens[0] == "[CLS]" and tokens[-2:] == ["[UNK]", "[SEP]"]
    if (REAL / "config.json").is_file():
        real_keys = set(json.loads((REAL / "config.json").read_text()))
        assert set(json.loads((tiny_dir / "config.json").read_text())) == real_keys - {"auto_map"}
