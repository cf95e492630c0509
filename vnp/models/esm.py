"""ESM2 protein embeddings through fair-esm: mean over residues of one layer's representation.

Two forward paths over the same fair-esm module:
- "fair-esm": fair-esm's own `model(tokens, repr_layers=[layer])`, the reference;
- "sdpa": our loop over its layers with `torch.nn.functional.scaled_dot_product_attention`
  (fused flash / memory-efficient kernels on GPU), stopping at the requested layer.
In float32 the two agree to ~1e-6.
"""

from __future__ import annotations

import argparse
import re
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Literal, Sequence

import esm
import numpy as np
import torch
import torch.nn.functional as F
from esm.model.esm2 import ESM2
from esm.multihead_attention import MultiheadAttention

from vnp.support.errors import InputError
from vnp.models.checkpoints import restricted_load
from vnp.models.batches import PreparedBatches, pinned, token_batches

Attention = Literal["sdpa", "fair-esm"]

ESM_URL = "https://dl.fbaipublicfiles.com/fair-esm/models/{name}.pt"
# ESM2 was trained on crops of 1024 tokens: BOS + 1022 residues + EOS.
MAX_RESIDUES = 1022
# Globals in an ESM2 checkpoint beyond torch's weights-only defaults: its config is a Namespace.
ESM_GLOBALS = [argparse.Namespace]


class EsmEmbedder:
    """A loaded ESM2 model that turns protein strings into mean-pooled float32 embeddings."""

    def __init__(self, model: ESM2, alphabet: esm.data.Alphabet, layer: int, attention: Attention):
        self.model = model
        self.alphabet = alphabet
        self.layer = layer
        self.attention = attention
        self.dim: int = model.embed_dim  # width of the vectors
        self.num_layers: int = model.num_layers
        # Single-character tokens ('A', 'X', '-', ...) map through a byte table; anything else
        # (e.g. '<mask>') goes through fair-esm's tokenizer. Same ids, ~200x faster per protein.
        self._byte_to_id = np.full(256, -1, dtype=np.int64)
        for tok, idx in alphabet.tok_to_idx.items():
            if len(tok) == 1 and tok.isascii():
                self._byte_to_id[ord(tok)] = idx

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    def encode(self, protein: str) -> np.ndarray:
        """Token ids of the residues (no BOS/EOS), truncated to MAX_RESIDUES."""
        if protein.isascii():
            ids = self._byte_to_id[np.frombuffer(protein.encode("ascii"), dtype=np.uint8)]
            if (ids >= 0).all():
                return ids[:MAX_RESIDUES]
        try:
            ids = np.asarray(self.alphabet.encode(protein), dtype=np.int64)
        except KeyError as err:
            raise ValueError(f"protein {protein[:30]!r}: token {err} is not in the ESM alphabet") from None
        return ids[:MAX_RESIDUES]

    def token_lengths(self, proteins: Sequence[str]) -> list[int]:
        """Tokens each protein takes in a batch: residues (at most 1022) + BOS + EOS."""
        return [len(self.encode(p)) + 2 for p in proteins]

    @torch.inference_mode()
    def embed(self, proteins: Sequence[str], max_tokens: int = 4096) -> np.ndarray:
        """Mean-pooled representations (N, D) float32, rows in input order.

        Proteins are sorted by length and batched so that rows x padded length <= max_tokens
        (one protein alone may exceed it). The mean runs over residue positions only (BOS and
        EOS excluded). Residues beyond the 1022nd are dropped, as fair-esm's
        `truncation_seq_length=1022` does; VirNucPro's proteins (<= 500 bp chunks, <= 166 aa) never
        reach that, so this matches the original's `t[i, 1 : len(seq) + 1].mean(0)`.
        """
        return self.run(self.prepare(proteins, max_tokens)).cpu().numpy()

    def prepare(self, proteins: Sequence[str], max_tokens: int = 4096) -> PreparedBatches:
        """The CPU half of `embed` (encode, batch, pad, pad masks; pinned for a GPU)."""
        encoded = [self.encode(p) for p in proteins]
        for i, ids in enumerate(encoded):
            if len(ids) == 0:
                raise ValueError(f"protein {i} is empty")
        batches = []
        for batch in token_batches([len(ids) + 2 for ids in encoded], max_tokens):
            tokens, residues = self._batch_tokens([encoded[i] for i in batch])
            padding = tokens.eq(self.alphabet.padding_idx)
            has_padding = torch.tensor(bool(padding.any()))  # decided here, not by a device sync
            batches.append(pinned(self.device, torch.tensor(batch), tokens, residues, padding, has_padding))
        return PreparedBatches(len(encoded), batches)

    @torch.inference_mode()
    def run(self, prepared: PreparedBatches) -> torch.Tensor:
        """The device half of `embed`: (N, D) float32 on the device, no host synchronisation."""
        out = torch.zeros((prepared.rows, self.dim), dtype=torch.float32, device=self.device)
        for rows, tokens, residues, padding, has_padding in prepared.batches:
            tokens, residues, padding = (t.to(self.device, non_blocking=True) for t in (tokens, residues, padding))
            reps = self.representations(tokens, padding if bool(has_padding) else None)
            out[rows.to(self.device, non_blocking=True)] = _mean_residues(reps, residues)
        return out

    def _batch_tokens(self, encoded: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) token ids laid out as fair-esm's BatchConverter does: BOS, residues, EOS, padding."""
        residues = torch.tensor([len(ids) for ids in encoded])
        tokens = torch.full((len(encoded), int(residues.max()) + 2), self.alphabet.padding_idx)
        tokens[:, 0] = self.alphabet.cls_idx
        for row, ids in enumerate(encoded):
            tokens[row, 1 : len(ids) + 1] = torch.from_numpy(ids)
            tokens[row, len(ids) + 1] = self.alphabet.eos_idx
        return tokens, residues

    def representations(self, tokens: torch.Tensor, padding: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, D) representation at `self.layer` for a (B, T) token batch on the device;
        `padding` is its pad mask, or None when it has no padding."""
        if self.attention == "fair-esm":
            return self.model(tokens, repr_layers=[self.layer])["representations"][self.layer]
        return forward_sdpa(self.model, tokens, self.layer, padding)


def _mean_residues(reps: torch.Tensor, residues: torch.Tensor) -> torch.Tensor:
    """(B, D) float32: the layer's representation (B, T, D) averaged over positions 1..len."""
    positions = torch.arange(reps.shape[1], device=reps.device)
    keep = (positions >= 1) & (positions <= residues[:, None])  # (B, T)
    summed = (reps.float() * keep[..., None]).sum(dim=1)
    return summed / residues[:, None]


# ---------------------------------------------------------------------------------------------
# The sdpa forward, over a fair-esm ESM2 module's weights


def forward_sdpa(model: ESM2, tokens: torch.Tensor, layer: int, padding: torch.Tensor | None) -> torch.Tensor:
    """(B, T, D) representation after `layer` blocks, as ESM2.forward computes it.

    `padding` is the (B, T) pad mask, or None when the batch has no padding (lets the GPU use
    the flash kernel). Like fair-esm, the last layer's output goes through emb_layer_norm_after.
    """
    x = _embed_tokens(model, tokens)  # (B, T, D)
    if layer == 0:
        return x
    cos, sin = _rotary_tables(tokens.shape[1], model.embed_dim // model.attention_heads, x.device, x.dtype)
    attend = None if padding is None else ~padding[:, None, None, :]  # (B, 1, 1, T): True = key is real
    for block in model.layers[:layer]:
        x = x + _self_attention(block.self_attn, block.self_attn_layer_norm(x), cos, sin, attend)
        x = x + block.fc2(F.gelu(block.fc1(block.final_layer_norm(x))))
    if layer == model.num_layers:
        x = model.emb_layer_norm_after(x)
    return x


def _embed_tokens(model: ESM2, tokens: torch.Tensor) -> torch.Tensor:
    """Token embeddings with ESM2's inference-time token-dropout rescaling and zeroed padding."""
    padding = tokens.eq(model.padding_idx)
    x = model.embed_scale * model.embed_tokens(tokens)
    if model.token_dropout:
        masked = tokens.eq(model.mask_idx)
        x = x.masked_fill(masked[..., None], 0.0)
        # Training zeroed 15% x 80% of tokens; rescale to the share of <mask> tokens seen here.
        mask_ratio_train = 0.15 * 0.8
        mask_ratio_observed = masked.sum(-1).to(x.dtype) / (~padding).sum(-1)
        x = x * (1 - mask_ratio_train) / (1 - mask_ratio_observed)[:, None, None]
    return x * (1 - padding[..., None].type_as(x))


def _rotary_tables(length: int, head_dim: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, head_dim) cos and sin of esm.rotary_embedding, computed in float32 then cast.

    Computing positions in float32 keeps them exact in bf16 runs, where fair-esm's own tables
    (built in the model dtype) round positions above 256.
    """
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim))
    angles = torch.outer(torch.arange(length, device=device).float(), inv_freq)  # (T, head_dim / 2)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def _self_attention(
    attn: MultiheadAttention, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend: torch.Tensor | None
) -> torch.Tensor:
    """fair-esm MultiheadAttention (rotary, no bias_kv) on (B, T, D) input through sdpa."""
    batch, length, dim = x.shape
    heads = attn.num_heads
    # One projection for q, k and v (weights fused at load), viewed as (B, T, 3, H, D/H): no copies.
    qkv = F.linear(x, *fused_qkv(attn)).view(batch, length, 3, heads, dim // heads)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # (B, H, T, D/H) views
    q = q * attn.scaling  # fair-esm scales q before the rotation
    q = q * cos + _rotate_half(q) * sin
    k = k * cos + _rotate_half(k) * sin
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attend, scale=1.0)  # q already scaled
    return attn.out_proj(out.transpose(1, 2).reshape(batch, length, dim))


def fused_qkv(attn: MultiheadAttention) -> tuple[torch.Tensor, torch.Tensor]:
    """The (3D, D) weight and (3D,) bias of q, k and v projections, concatenated once per module
    (q_proj, k_proj and v_proj then become views into them, so no memory is doubled)."""
    fused = getattr(attn, "_vnp_qkv", None)
    if fused is None or fused[0].device != attn.q_proj.weight.device or fused[0].dtype != attn.q_proj.weight.dtype:
        projections = (attn.q_proj, attn.k_proj, attn.v_proj)
        with torch.no_grad():
            weight = torch.cat([p.weight for p in projections])
            bias = torch.cat([p.bias for p in projections])
        dim = attn.q_proj.weight.shape[0]
        for i, proj in enumerate(projections):
            proj.weight = torch.nn.Parameter(weight[i * dim:(i + 1) * dim], requires_grad=False)
            proj.bias = torch.nn.Parameter(bias[i * dim:(i + 1) * dim], requires_grad=False)
        attn._vnp_qkv = fused = (weight, bias)
    return fused


# ---------------------------------------------------------------------------------------------
# Loading


def load_esm(
    name_or_path: str | Path,
    layer: int | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    attention: Attention = "sdpa",
) -> EsmEmbedder:
    """Load an ESM2 checkpoint in eval mode.

    `name_or_path` is a fair-esm model name (`esm2_t36_3B_UR50D`: taken from the torch hub
    checkpoint folder, downloaded there first if missing) or a path to a local `.pt` in fair-esm's
    format. `layer` picks the representation (0 = embeddings, default the last layer). The
    contact-regression weights are not needed for embeddings and are not looked for.
    """
    if attention not in ("sdpa", "fair-esm"):
        raise InputError(f"esm attention: expected 'sdpa' or 'fair-esm', got {attention!r}")
    path = resolve_checkpoint(str(name_or_path))
    data = restricted_load(path, ESM_GLOBALS, "ESM checkpoint")
    if not isinstance(data, dict) or "cfg" not in data or "model" not in data:
        raise InputError(f"{path}: not an ESM2 checkpoint (expected the keys 'model' and 'cfg')")
    # fair-esm picks its ESM2 loader by the name's prefix.
    name = path.stem if path.stem.startswith("esm2") else f"esm2_{path.stem}"
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Regression weights not found")
            model, alphabet = esm.pretrained.load_model_and_alphabet_core(name, data, regression_data=None)
    except (RuntimeError, AttributeError, KeyError, TypeError, ValueError) as err:
        raise InputError(f"{path}: not a valid ESM2 checkpoint ({str(err).splitlines()[0]})") from None
    del data
    layer = model.num_layers if layer is None else layer
    if not 0 <= layer <= model.num_layers:
        raise InputError(f"{path}: esm layer {layer} is out of range 0..{model.num_layers}")
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    if attention == "sdpa":
        for block in model.layers:
            fused_qkv(block.self_attn)
    return EsmEmbedder(model, alphabet, layer, attention)


def resolve_checkpoint(name_or_path: str) -> Path:
    """A local file, or the hub cache copy of a named model (downloaded when missing)."""
    path = Path(name_or_path).expanduser()
    if path.suffix == ".pt" or len(path.parts) > 1 or path.exists():
        return path  # restricted_load reports a missing file
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name_or_path):
        raise InputError(f"{name_or_path!r}: not an ESM model name or a .pt path")
    cached = Path(torch.hub.get_dir()) / "checkpoints" / f"{name_or_path}.pt"
    if not cached.is_file():
        url = ESM_URL.format(name=name_or_path)
        cached.parent.mkdir(parents=True, exist_ok=True)
        try:  # downloads to a temporary file and renames it, so no partial file is left behind
            torch.hub.download_url_to_file(url, str(cached), progress=False)
        except Exception as err:  # urllib raises URLError/HTTPError/OSError/ValueError
            message = f"{name_or_path}: not in {cached.parent} and download of {url} failed ({err})"
            raise InputError(message) from None
    return cached


def build_tiny_esm(
    path: str | Path, seed: int = 0, num_layers: int = 2, embed_dim: int = 64, attention_heads: int = 4
) -> Path:
    """Write a small random ESM2 checkpoint in fair-esm's own file layout; returns its path.

    `{"model": state dict with fairseq's "encoder.sentence_encoder." / "encoder." prefixes,
    "cfg": {"model": Namespace(encoder_layers=..., ...)}}`, as the released `esm2_t*.pt` files.
    The contact-regression weights are left out, as in the released files. Name the file
    `esm2_*.pt` so that fair-esm's own loader also treats it as ESM2 (if `path` is a folder,
    `esm2_tiny.pt` is written in it). Same arguments give a byte-identical file; the global torch
    RNG is left as it was.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "esm2_tiny.pt"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ESM2(num_layers, embed_dim, attention_heads, alphabet="ESM-1b", token_dropout=True)
        _perturb_norms_and_biases(model)
    state = OrderedDict()
    for name, tensor in model.state_dict().items():
        if name.startswith("contact_head."):
            continue
        prefix = "encoder." if name.startswith("lm_head.") else "encoder.sentence_encoder."
        state[prefix + name] = tensor.clone()  # clone: lm_head.weight is tied to embed_tokens
    cfg = argparse.Namespace(
        arch="esm2",
        encoder_layers=num_layers,
        encoder_embed_dim=embed_dim,
        encoder_ffn_embed_dim=4 * embed_dim,
        encoder_attention_heads=attention_heads,
        token_dropout=True,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state, "cfg": {"model": cfg}}, path)
    return path


@torch.no_grad()
def _perturb_norms_and_biases(model: ESM2) -> None:
    """ESM2 initialises LayerNorms to identity and some biases to 0; give them values so that
    tests exercise every parameter."""
    for name, param in model.named_parameters():
        if param.ndim == 1:
            base = 1.0 if "norm" in name and name.endswith("weight") else 0.0
            param.copy_(base + 0.1 * torch.randn_like(param))
