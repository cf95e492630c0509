"""DNABERT-S in plain PyTorch: config, model, checkpoint loading, tokenizer, embedder.

DNABERT-S (``zhihan1996/DNABERT-S``) is a MosaicBERT encoder, the DNABERT-2 architecture:
- no position embeddings; a symmetric ALiBi bias ``-slope_h * |i - j|`` on attention scores;
- post-LayerNorm layers with a fused ``Wqkv`` projection and a gated-GELU MLP.
The published code needs ``trust_remote_code`` and no longer loads with transformers 5, so this
module rebuilds the architecture with the same parameter names, so the published checkpoint
(``bert.``-prefixed keys) loads directly. The original removes padding inside the encoder; here
padded keys are masked instead, so a padded batch gives the same per-token outputs as running
each sequence alone.

Typical use::

    embedder = load_dnabert("zhihan1996/DNABERT-S", device="cuda", dtype=torch.bfloat16)
    vectors = embedder.embed(["ACGT...", "TTGA..."])   # float32 (N, 768)
"""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn

from vnp.support.errors import InputError
from vnp.models.batches import PreparedBatches, pinned, token_batches
from vnp.support.paths import regular_file

SPECIAL_TOKENS = ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]")  # ids 0..4, as in DNABERT-2
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
CHECKPOINT_FILES = ("model.safetensors", "pytorch_model.bin")  # first one present wins
# Buffers that some MosaicBERT versions saved; they are recomputed here, never loaded.
IGNORED_CHECKPOINT_KEYS = ("encoder.alibi", "embeddings.token_type_ids", "embeddings.position_ids")


# ----------------------------------------------------------------------------- config


@dataclass
class DnabertConfig:
    """Architecture settings; field names match the published ``config.json``."""

    vocab_size: int = 4096
    """Number of BPE tokens (rows of the word embedding)."""
    hidden_size: int = 768
    """Width of every token vector (H)."""
    num_hidden_layers: int = 12
    """Number of encoder layers."""
    num_attention_heads: int = 12
    """Attention heads per layer; must divide hidden_size."""
    intermediate_size: int = 3072
    """Width of the gated MLP (I); gated_layers projects H -> 2 * I."""
    layer_norm_eps: float = 1e-12
    """Epsilon of every LayerNorm."""
    hidden_dropout_prob: float = 0.1
    """Dropout after embeddings, attention output and MLP (training only)."""
    attention_probs_dropout_prob: float = 0.0
    """Dropout on attention probabilities (training only)."""
    type_vocab_size: int = 2
    """Rows of the token-type embedding; only type 0 is used."""
    pad_token_id: int = 0
    """padding_idx of the word embedding in the original (affects init only, not inference)."""
    max_position_embeddings: int = 512
    """Informational: ALiBi has no length limit and this model enforces none."""
    alibi_starting_size: int = 512
    """Informational: the original's initial ALiBi cache size; biases are built per batch here."""

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "type_vocab_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be a multiple of "
                             f"num_attention_heads ({self.num_attention_heads})")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")

    @classmethod
    def from_dict(cls, d: dict) -> DnabertConfig:
        """Build from a config dict; keys this model does not use (auto_map, ...) are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def from_json(cls, path: str | Path) -> DnabertConfig:
        """Read a Hugging Face style ``config.json``."""
        return cls.from_dict(json.loads(Path(path).read_text()))

    def to_dict(self) -> dict:
        """The fields as a plain dict (JSON-serialisable)."""
        return asdict(self)


# ----------------------------------------------------------------------------- ALiBi


def alibi_slopes(n_heads: int) -> list[float]:
    """Per-head ALiBi slopes (Press et al. 2022), as MosaicBERT computes them.

    For 2^k heads: the geometric series starting at and with ratio 2^(-8 / 2^k). Otherwise the
    slopes of the closest lower power of two, then every other slope of twice that count.
    """
    def power_of_2(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(n_heads).is_integer():
        return power_of_2(n_heads)
    closest = 2 ** math.floor(math.log2(n_heads))
    return power_of_2(closest) + power_of_2(2 * closest)[0::2][: n_heads - closest]


def attention_bias(key_mask: torch.Tensor, slopes: list[float], dtype: torch.dtype) -> torch.Tensor:
    """Float SDPA mask (B, h, T, T): symmetric ALiBi, and the dtype's minimum on padded keys.

    key_mask: (B, T) bool, True on real tokens. A finite minimum (not -inf) keeps a row whose keys
    are all padding finite instead of NaN; rows with any real key give padded keys weight 0.
    """
    seq_len = key_mask.shape[1]
    pos = torch.arange(seq_len, device=key_mask.device)
    distance = (pos[None, :] - pos[:, None]).abs().float()                        # (T, T)
    slope = torch.tensor(slopes, dtype=torch.float32, device=key_mask.device)    # (h,)
    alibi = (-slope[:, None, None] * distance).to(dtype)                          # (h, T, T)
    fill = torch.tensor(torch.finfo(dtype).min, dtype=dtype, device=key_mask.device)
    return torch.where(key_mask[:, None, None, :], alibi[None], fill)             # (B, h, T, T)


# ----------------------------------------------------------------------------- modules
# Attribute names mirror the published checkpoint's keys (e.g. attention.self.Wqkv, mlp.wo).


class DnabertEmbeddings(nn.Module):
    """Word + token-type embeddings, LayerNorm, dropout; no position embeddings (ALiBi)."""

    def __init__(self, config: DnabertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size,
                                            padding_idx=config.pad_token_id)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # every token has type 0, so its embedding is one row broadcast over (B, T)
        hidden = self.word_embeddings(input_ids) + self.token_type_embeddings.weight[0]
        return self.dropout(self.LayerNorm(hidden))                               # (B, T, H)


class DnabertSelfAttention(nn.Module):
    """Fused QKV projection and scaled dot-product attention under a float bias."""

    def __init__(self, config: DnabertConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.dropout_prob = config.attention_probs_dropout_prob
        self.Wqkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)

    def forward(self, hidden: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        batch, seq_len, width = hidden.shape
        # the fused output is laid out (3, heads, head_dim) per token, as in the original
        qkv = self.Wqkv(hidden).view(batch, seq_len, 3, self.num_heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)                            # 3 x (B, h, T, d)
        dropout = self.dropout_prob if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout)
        return out.transpose(1, 2).reshape(batch, seq_len, width)                 # (B, T, H)


class DnabertSelfOutput(nn.Module):
    """Output projection, dropout, post-LayerNorm over the residual."""

    def __init__(self, config: DnabertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, attended: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(attended)) + residual)


class DnabertAttention(nn.Module):
    """Self-attention block: ``attention.self`` then ``attention.output``."""

    def __init__(self, config: DnabertConfig) -> None:
        super().__init__()
        self.self = DnabertSelfAttention(config)
        self.output = DnabertSelfOutput(config)

    def forward(self, hidden: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(hidden, bias), hidden)


class DnabertGatedMlp(nn.Module):
    """Gated-GELU MLP: gelu(x W_g) * (x W_v), then wo, dropout, post-LayerNorm."""

    def __init__(self, config: DnabertConfig) -> None:
        super().__init__()
        self.intermediate_size = config.intermediate_size
        # one matrix holds both halves: [:I] is gated through GELU, [I:] is the linear value
        self.gated_layers = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.wo = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        gated, value = self.gated_layers(hidden).split(self.intermediate_size, dim=-1)  # (B, T, I)
        inner = self.dropout(F.gelu(gated) * value)
        return self.layernorm(self.wo(inner) + hidden)


class DnabertLayer(nn.Module):
    """One encoder layer: attention, then the gated MLP."""

    def __init__(self, config: DnabertConfig) -> None:
        super().__init__()
        self.attention = DnabertAttention(config)
        self.mlp = DnabertGatedMlp(config)

    def forward(self, hidden: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.attention(hidden, bias))


class DnabertEncoder(nn.Module):
    """The stack of layers (``encoder.layer.N``)."""

    def __init__(self, config: DnabertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(DnabertLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, hidden: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            hidden = layer(hidden, bias)
        return hidden


class DnabertPooler(nn.Module):
    """dense + tanh on [CLS]; in the checkpoint, never used for embeddings."""

    def __init__(self, config: DnabertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(hidden[:, 0]))


class DnabertModel(nn.Module):
    """DNABERT-S encoder: (B, T) token ids -> (B, T, H) last-layer hidden states."""

    def __init__(self, config: DnabertConfig) -> None:
        super().__init__()
        self.config = config
        self.slopes = alibi_slopes(config.num_attention_heads)
        self.embeddings = DnabertEmbeddings(config)
        self.encoder = DnabertEncoder(config)
        self.pooler = DnabertPooler(config)

    def forward(self, input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids: (B, T) long; attention_mask: (B, T), nonzero on real tokens (default: all).

        Outputs at padded positions are finite but meaningless: callers pool over real tokens.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        hidden = self.embeddings(input_ids)                                       # (B, T, H)
        bias = attention_bias(attention_mask.bool(), self.slopes, hidden.dtype)   # (B, h, T, T)
        return self.encoder(hidden, bias)

    def load_checkpoint(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load published weights in place (keys with or without ``bert.``).

        ``cls.*`` (the MLM head) is ignored; the pooler may be missing. Any other missing key,
        an unknown key, or a shape mismatch raises ValueError naming the keys.
        """
        weights = select_encoder_weights(state_dict)
        expected = self.state_dict()
        missing = sorted(k for k in expected.keys() - weights.keys() if not k.startswith("pooler."))
        unexpected = sorted(weights.keys() - expected.keys())
        if missing or unexpected:
            raise ValueError(f"checkpoint does not match the DNABERT architecture: "
                             f"missing {_preview(missing)}, unexpected {_preview(unexpected)}")
        for key, tensor in weights.items():
            if tuple(tensor.shape) != tuple(expected[key].shape):
                raise ValueError(f"checkpoint tensor '{key}' has shape {tuple(tensor.shape)}, "
                                 f"config expects {tuple(expected[key].shape)}")
        self.load_state_dict(weights, strict=False)  # copies into our params: keeps their dtype


def select_encoder_weights(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip the ``bert.`` prefix; drop the MLM head and recomputed buffers."""
    weights = {}
    for key, tensor in state_dict.items():
        if key.startswith("cls."):
            continue
        name = key.removeprefix("bert.")
        if name not in IGNORED_CHECKPOINT_KEYS:
            weights[name] = tensor
    return weights


def _preview(keys: list[str], limit: int = 5) -> str:
    """A short printable list of keys for error messages."""
    if not keys:
        return "none"
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


# ----------------------------------------------------------------------------- tokenizer


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Read a ``tokenizer.json`` with its stored truncation and padding switched off.

    The published file stores truncation at 2000 tokens and fixed padding to 2000; the original
    called ``tokenizer(seq)``, which applies neither, so neither applies here.
    """
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def tokenize(tokenizer: Tokenizer, seqs: list[str]) -> list[list[int]]:
    """Token ids of each upper-cased sequence, with [CLS] ... [SEP] (N and others -> [UNK])."""
    encodings = tokenizer.encode_batch([seq.upper() for seq in seqs])
    return [encoding.ids for encoding in encodings]


def pad_batch(ids: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id lists: (B, T) long ids and (B, T) bool mask of real tokens."""
    seq_len = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), seq_len), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), seq_len), dtype=torch.bool)
    for row, x in enumerate(ids):
        input_ids[row, : len(x)] = torch.tensor(x, dtype=torch.long)
        mask[row, : len(x)] = True
    return input_ids, mask


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens, in fp32: (B, T, H), (B, T) -> (B, H)."""
    weights = mask.to(torch.float32).unsqueeze(-1)                                # (B, T, 1)
    return (hidden.float() * weights).sum(dim=1) / weights.sum(dim=1)


# ----------------------------------------------------------------------------- embedder


class DnabertEmbedder:
    """Sequences -> one mean-pooled DNABERT vector each (float32, input order)."""

    def __init__(self, model: DnabertModel, tokenizer: Tokenizer,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> None:
        self.device = torch.device(device)
        self.dtype = dtype
        self.model = model.to(device=self.device, dtype=dtype).eval()
        self.tokenizer = tokenizer
        self.dim: int = model.config.hidden_size  # width of the vectors
        self.pad_id = tokenizer.token_to_id("[PAD]")
        if self.pad_id is None:
            raise ValueError("tokenizer has no [PAD] token")

    def token_lengths(self, seqs: list[str]) -> list[int]:
        """Tokens per sequence, [CLS] and [SEP] included."""
        return [len(ids) for ids in tokenize(self.tokenizer, seqs)]

    @torch.inference_mode()
    def embed(self, seqs: list[str], max_tokens: int = 16384) -> np.ndarray:
        """(N, H) float32: the mean of last-layer states over all real tokens, [CLS]/[SEP] included.

        Equals the original ``model(tokenizer(seq))[0].mean(1)``, one unpadded sequence per call.
        """
        return self.run(self.prepare(seqs, max_tokens)).cpu().numpy()

    def prepare(self, seqs: list[str], max_tokens: int = 16384) -> PreparedBatches:
        """The CPU half of `embed` (tokenize, batch, pad; pinned for a GPU): safe on a helper thread."""
        ids = tokenize(self.tokenizer, seqs)
        batches = []
        for batch in token_batches([len(x) for x in ids], max_tokens):
            input_ids, mask = pad_batch([ids[i] for i in batch], self.pad_id)
            batches.append(pinned(self.device, torch.tensor(batch), input_ids, mask))
        return PreparedBatches(len(seqs), batches)

    @torch.inference_mode()
    def run(self, prepared: PreparedBatches) -> torch.Tensor:
        """The device half of `embed`: (N, H) float32 on the device, no host synchronisation."""
        out = torch.zeros((prepared.rows, self.dim), dtype=torch.float32, device=self.device)
        for rows, input_ids, mask in prepared.batches:
            input_ids, mask = (t.to(self.device, non_blocking=True) for t in (input_ids, mask))
            out[rows.to(self.device, non_blocking=True)] = masked_mean(self.model(input_ids, mask), mask)
        return out


# ----------------------------------------------------------------------------- loading


def load_dnabert(name_or_path: str, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> DnabertEmbedder:
    """An embedder from a local folder or a Hugging Face hub id (e.g. ``zhihan1996/DNABERT-S``).

    The folder needs config.json, tokenizer.json and model.safetensors or pytorch_model.bin.
    Raises InputError when neither a folder nor a download provides them, or a file is corrupt.
    """
    folder = resolve_model_folder(name_or_path)
    config = read_config(folder / CONFIG_FILE)
    tokenizer = read_tokenizer(folder / TOKENIZER_FILE)
    checkpoint = find_checkpoint(folder)
    check_fits(config, checkpoint)
    model = DnabertModel(config)
    try:
        model.load_checkpoint(read_state_dict(checkpoint))
    except ValueError as err:
        raise InputError(f"{checkpoint}: {err}") from err
    return DnabertEmbedder(model, tokenizer, device=device, dtype=dtype)


def check_fits(config: DnabertConfig, checkpoint: Path) -> None:
    """Refuse a config.json that describes a model far larger than its checkpoint holds, before the
    model is built: a few edited numbers would otherwise allocate any amount of memory."""
    h, i = config.hidden_size, config.intermediate_size
    parameters = (config.vocab_size + config.type_vocab_size) * h + config.num_hidden_layers * (4 * h * h + 3 * h * i)
    alibi = config.num_attention_heads * config.alibi_starting_size ** 2  # a buffer, not in the file
    needed = 4 * (parameters + alibi)
    size = os.stat(checkpoint).st_size
    if needed > 4 * size + (256 << 20):
        raise InputError(f"{checkpoint.parent / CONFIG_FILE}: describes a model of {needed >> 20} MiB, far more "
                         f"than its checkpoint's {size >> 20} MiB hold")


def resolve_model_folder(name_or_path: str) -> Path:
    """A local folder as is; a path-looking name that is no folder is an error; else download."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists() or str(name_or_path).startswith((".", "/", "~")):
        raise InputError(f"{name_or_path}: not a DNABERT model folder")
    return download_snapshot(str(name_or_path))


def download_snapshot(repo_id: str) -> Path:
    """Fetch only the files we read from the hub (safetensors preferred over the .bin)."""
    from huggingface_hub import (
        snapshot_download,  # imported here: only needed for hub ids
    )

    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=[CONFIG_FILE, TOKENIZER_FILE,
                                                                 CHECKPOINT_FILES[0]]))
        if not (folder / CHECKPOINT_FILES[0]).is_file():
            folder = Path(snapshot_download(repo_id, allow_patterns=[CHECKPOINT_FILES[1]]))
    except Exception as err:  # network, auth, unknown repo, invalid id: all mean "cannot get it"
        raise InputError(f"{repo_id}: not a local folder, and downloading it from the Hugging "
                         f"Face hub failed ({type(err).__name__}: {err})") from err
    return folder


def read_config(path: Path) -> DnabertConfig:
    """config.json -> DnabertConfig, with InputError on a missing or invalid file."""
    if not path.is_file():
        raise InputError(f"{path}: missing (a DNABERT folder needs {CONFIG_FILE})")
    try:
        return DnabertConfig.from_json(path)
    except (ValueError, TypeError) as err:  # JSONDecodeError is a ValueError
        raise InputError(f"{path}: invalid DNABERT config ({err})") from err


def read_tokenizer(path: Path) -> Tokenizer:
    """tokenizer.json -> Tokenizer (truncation/padding off), with InputError on failure."""
    if not path.is_file():
        raise InputError(f"{path}: missing (a DNABERT folder needs {TOKENIZER_FILE})")
    try:
        tokenizer = load_tokenizer(path)
    except Exception as err:  # the Rust side raises plain Exception on malformed JSON
        raise InputError(f"{path}: cannot read tokenizer ({err})") from err
    if tokenizer.token_to_id("[PAD]") is None:
        raise InputError(f"{path}: tokenizer has no [PAD] token")
    return tokenizer


def find_checkpoint(folder: Path) -> Path:
    """The first checkpoint file present in the folder (a regular file: a FIFO would block)."""
    for name in CHECKPOINT_FILES:
        if (folder / name).exists():
            return regular_file(folder / name, "DNABERT checkpoint")
    raise InputError(f"{folder}: no checkpoint (expected {' or '.join(CHECKPOINT_FILES)})")


def model_files(folder: Path) -> list[str]:
    """The files `load_dnabert` reads from a model folder, and nothing else in it."""
    return [CONFIG_FILE, TOKENIZER_FILE, find_checkpoint(folder).name]


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors from model.safetensors or pytorch_model.bin (weights_only: no code runs)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(path), device="cpu")
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated file, bad header, pickle with non-tensor objects
        raise InputError(f"{path}: cannot read checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(state_dict, dict):
        raise InputError(f"{path}: checkpoint is not a dict of tensors")
    return state_dict


# ----------------------------------------------------------------------------- tiny model


def train_tiny_tokenizer(vocab_size: int, seed: int) -> Tokenizer:
    """A DNABERT-2 style BPE tokenizer learned from seeded random DNA.

    Same special tokens at ids 0-4, then A C G T, then merges; Whitespace pre-tokenizer and a
    ``[CLS] $A [SEP]`` post-processor, and the published file's stored truncation/padding at
    2000, so loaders must switch them off just as with the real file. The BPE trainer breaks
    ties by token id, so a given seed always gives the same file.
    """
    from tokenizers import models, pre_tokenizers, processors, trainers

    rng = random.Random(seed)
    corpus = ["".join(rng.choices("ACGT", k=500)) for _ in range(200)]  # 100 kb
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=list("ACGT"), show_progress=False)
    tokenizer.train_from_iterator(corpus, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 1), ("[SEP]", 2)])
    tokenizer.enable_truncation(max_length=2000)
    tokenizer.enable_padding(length=2000, pad_id=3, pad_token="[PAD]")
    return tokenizer


def tiny_config_json(config: DnabertConfig) -> dict:
    """The published config.json's keys with tiny sizes (auto_map left out: no remote code)."""
    return {
        "_name_or_path": "vnp/tiny-dnabert",
        **config.to_dict(),
        "architectures": ["BertModel"],
        "classifier_dropout": None,
        "gradient_checkpointing": False,
        "hidden_act": "gelu",
        "initializer_range": 0.02,
        "model_type": "bert",
        "position_embedding_type": "absolute",
        "torch_dtype": "float32",
        "transformers_version": "4.28.0",
        "use_cache": True,
    }


def build_tiny_dnabert(out_dir: str | Path, seed: int = 0, hidden_size: int = 64,
                       num_hidden_layers: int = 2, num_attention_heads: int = 4,
                       intermediate_size: int = 128, vocab_size: int = 400) -> Path:
    """Write a small random DNABERT folder (config.json, tokenizer.json, model.safetensors).

    Offline and fast; the same arguments give byte-identical files. The weights are random
    (PyTorch default init from ``torch.manual_seed(seed)``), saved with ``bert.`` keys like the
    published checkpoint. The caller's global RNG state is left untouched.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = DnabertConfig(vocab_size=vocab_size, hidden_size=hidden_size,
                           num_hidden_layers=num_hidden_layers,
                           num_attention_heads=num_attention_heads,
                           intermediate_size=intermediate_size)
    tokenizer = train_tiny_tokenizer(vocab_size, seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DnabertModel(config)
    tensors = {f"bert.{k}": v.contiguous() for k, v in model.state_dict().items()}
    config_text = json.dumps(tiny_config_json(config), indent=2, sort_keys=True) + "\n"
    (out / CONFIG_FILE).write_text(config_text)
    tokenizer.save(str(out / TOKENIZER_FILE), pretty=True)
    save_file(tensors, str(out / CHECKPOINT_FILES[0]), metadata={"format": "pt"})
    return out
