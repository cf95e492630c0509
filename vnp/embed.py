"""Per-frame embeddings from FASTA: DNABERT-S over nucleotide frames, ESM2 over protein frames.

    vnp embed dnabert INPUT.fa -m MODEL -o OUT.npz [--max-tokens N] [--device cpu|cuda] [--precision fp32|bf16|fp16]
    vnp embed esm INPUT.faa -m MODEL [--layer N] -o OUT.npz [--attention sdpa|fair-esm] [...]
    python -m vnp.embed dnabert INPUT.fa -m MODEL -o OUT.npz

MODEL is a DNABERT-S folder or hub id (`zhihan1996/DNABERT-S`), or an ESM2 `.pt` or fair-esm name
(`esm2_t36_3B_UR50D`). The output `.npz` holds `ids` (unicode, input order) and `embeddings`
(float32, one row per record); `numpy.load(path, allow_pickle=False)` reads it. It is written to a
temporary name and renamed, so a failed run leaves no partial file.

The input is read twice: once to check every record (IDs, letters) before any model time is
spent, then streamed through the model in slices of records, so memory stays bounded.
"""

from __future__ import annotations

import argparse
import io
import itertools
import lzma
import os
import re
import sys
import time
import zlib
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol, Sequence

import numpy as np
import torch
from Bio.SeqIO.FastaIO import SimpleFastaParser

from vnp.errors import InputError, exit_on_input_error, where
from vnp.models import token_budget
from vnp.seqio import NUCLEOTIDE_LETTERS, open_binary

HELP = "embed nucleotide frames with DNABERT-S or protein frames with ESM2 (.npz out)"

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
BATCH_RECORDS = 4096  # records per slice: tokenised, sorted by length and batched together

Records = Iterable[tuple[str, str]]  # (record ID, sequence)
SequenceCheck = Callable[[Path, str, str], str]  # (file, ID, sequence) -> sequence to embed


class Embedder(Protocol):
    """What DnabertEmbedder and EsmEmbedder share: sequences -> (N, D) float32 in input order."""

    def embed(self, seqs: Sequence[str], max_tokens: int) -> np.ndarray: ...


# ----------------------------------------------------------------------------- reading


def read_fasta(path: Path) -> Iterator[tuple[str, str]]:
    """(title, sequence) of each record, streamed (plain, gzip, bz2 or xz)."""
    try:
        with io.TextIOWrapper(open_binary(path), encoding="utf-8") as text:
            yield from SimpleFastaParser(text)
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: not a text FASTA file (byte {err.object[err.start]:#04x} is not UTF-8)") from None
    except (EOFError, OSError, zlib.error, lzma.LZMAError) as err:  # truncated or corrupt compressed data
        raise InputError(f"{path}: cannot read ({type(err).__name__}: {err})") from None


def checked_records(path: Path, check: SequenceCheck) -> Iterator[tuple[str, str]]:
    """(ID, sequence) of each record, in file order; the ID is the title up to the first space.

    Raises InputError, naming the file and record, on a missing/empty file, a file without
    records, a header without ID, a duplicate ID, an empty sequence, or what `check` refuses.
    """
    seen: set[str] = set()
    number = 0
    for number, (title, seq) in enumerate(read_fasta(path), start=1):
        fields = title.split(None, 1)
        if not fields:
            raise InputError(f"{path}: record {number}: header has no ID")
        rid = fields[0]
        if rid in seen:
            raise InputError(f"{where(path, rid)}: duplicate record ID")
        if not seq:
            raise InputError(f"{where(path, rid)}: empty sequence")
        seen.add(rid)
        yield rid, check(path, rid, seq)
    if number == 0:
        raise InputError(f"{path}: no FASTA records (expected lines starting with '>')")


_NOT_NUCLEOTIDE = str.maketrans("", "", NUCLEOTIDE_LETTERS.decode("ascii"))


def nucleotide_check(path: Path, rid: str, seq: str) -> str:
    """Upper-cased sequence; refuses letters that are not IUPAC nucleotide codes."""
    bad = seq.translate(_NOT_NUCLEOTIDE)
    if bad:
        raise InputError(f"{where(path, rid)}: invalid character {bad[0]!r} at position {seq.index(bad[0]) + 1} "
                         "(expected nucleotide letters: ACGTU, IUPAC ambiguity codes or N)")
    return seq.upper()


def protein_check(alphabet) -> SequenceCheck:
    """A check that refuses proteins with characters the ESM alphabet cannot encode (e.g. '*')."""
    letters = {tok for tok in alphabet.tok_to_idx if len(tok) == 1}
    specials = re.compile("|".join(re.escape(t) for t in alphabet.unique_no_split_tokens if len(t) > 1))

    def check(path: Path, rid: str, seq: str) -> str:
        rest = specials.sub("", seq) if "<" in seq else seq  # '<mask>' and the like are one token
        for char in rest:
            if char not in letters:
                raise InputError(f"{where(path, rid)}: character {char!r} cannot be encoded by ESM "
                                 "(expected amino-acid letters, X, B, Z, U, O, '-' or '.')")
        return seq

    return check


def count_records(path: Path, check: SequenceCheck) -> int:
    """Check every record of a file (see `checked_records`); returns how many there are."""
    return sum(1 for _ in checked_records(path, check))


# ----------------------------------------------------------------------------- embedding


def slices(records: Records, size: int) -> Iterator[list[tuple[str, str]]]:
    """Consecutive lists of at most `size` records."""
    iterator = iter(records)
    while piece := list(itertools.islice(iterator, size)):
        yield piece


def embed_records(embedder: Embedder, records: Records, max_tokens: int,
                  batch_records: int = BATCH_RECORDS) -> Iterator[tuple[list[str], np.ndarray]]:
    """(IDs, (n, D) float32 embeddings) per slice of `batch_records` records, in input order.

    Each slice is sorted by length and cut into batches of at most `max_tokens` padded tokens by
    the embedder, so memory is bounded by the slice, not the input.
    """
    for piece in slices(records, batch_records):
        ids = [rid for rid, _ in piece]
        yield ids, embedder.embed([seq for _, seq in piece], max_tokens=max_tokens)


def collect(pieces: Iterable[tuple[list[str], np.ndarray]], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate slices: (ids [N] unicode, embeddings [N, dim] float32)."""
    ids: list[str] = []
    arrays = [np.zeros((0, dim), dtype=np.float32)]
    for piece_ids, piece in pieces:
        ids.extend(piece_ids)
        arrays.append(piece)
    return np.asarray(ids, dtype=np.str_), np.concatenate(arrays).astype(np.float32, copy=False)


def embedding_dim(embedder: Embedder) -> int:
    """Width of the embedder's vectors (DNABERT: hidden_size, ESM: embed_dim)."""
    dim = getattr(embedder, "hidden_size", None) or getattr(embedder, "embed_dim", None)
    if dim is None:
        raise TypeError(f"{type(embedder).__name__} has neither hidden_size nor embed_dim")
    return int(dim)


def write_npz(path: Path, ids: np.ndarray, embeddings: np.ndarray) -> None:
    """Write `ids` and `embeddings` to a temporary file beside `path`, then rename it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            np.savez(fh, ids=ids, embeddings=embeddings)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- CLI


def load_embedder(args: argparse.Namespace) -> Embedder:
    """The model named by -m, on --device in --precision."""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available")
    dtype = PRECISIONS[args.precision]
    if args.model_kind == "dnabert":
        from vnp.models.dnabert import load_dnabert

        return load_dnabert(args.model, device=args.device, dtype=dtype)
    from vnp.models.esm import load_esm

    return load_esm(args.model, layer=args.layer, device=args.device, dtype=dtype, attention=args.attention)


def check_output(path: Path) -> None:
    """Refuse an output path that is a folder; create its parent folder."""
    if path.is_dir():
        raise InputError(f"{path}: output is an existing folder (expected a file name such as out.npz)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"{path.parent}: cannot create output folder ({err.strerror})") from None
    if not os.access(path.parent, os.W_OK):
        raise InputError(f"{path.parent}: output folder is not writable")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="model_kind", required=True, metavar="MODEL")
    dnabert = sub.add_parser("dnabert", help="DNABERT-S over nucleotide frames (mean of last layer)")
    esm = sub.add_parser("esm", help="ESM2 over protein frames (mean of one layer over residues)")
    for p, what in ((dnabert, "DNABERT-S folder or hub id"), (esm, "ESM2 .pt file or fair-esm model name")):
        p.add_argument("input", metavar="INPUT", help="FASTA file (.gz, .bz2, .xz accepted)")
        p.add_argument("-m", "--model", required=True, help=what)
        p.add_argument("-o", "--output", required=True, help="output .npz (ids, embeddings)")
        p.add_argument("--max-tokens", type=int, default=None,
                       help="padded tokens per forward pass (default: by model and device)")
        p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
        p.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32")
    esm.add_argument("--layer", type=int, default=None, help="representation layer (default: the last)")
    esm.add_argument("--attention", choices=["sdpa", "fair-esm"], default="sdpa")


@exit_on_input_error
def run(args: argparse.Namespace) -> int:
    if args.max_tokens is not None and args.max_tokens <= 0:
        raise InputError(f"--max-tokens must be positive, got {args.max_tokens}")
    max_tokens = token_budget(args.model_kind, args.device, args.max_tokens or 0)
    if max_tokens <= 0:
        raise InputError(f"--max-tokens must be positive, got {max_tokens}")
    path, output = Path(args.input), Path(args.output)
    check_output(output)
    open_binary(path).close()  # missing, unreadable or empty input fails before the model loads
    embedder = load_embedder(args)
    check = nucleotide_check if args.model_kind == "dnabert" else protein_check(embedder.alphabet)
    count = count_records(path, check)
    start = time.perf_counter()
    pieces = embed_records(embedder, checked_records(path, check), max_tokens)
    ids, embeddings = collect(pieces, embedding_dim(embedder))
    seconds = time.perf_counter() - start
    if len(ids) != count:  # every record accounted for, checked rather than assumed
        raise InputError(f"{path}: changed while being read ({count} records, then {len(ids)})")
    write_npz(output, ids, embeddings)
    print(f"{path}: {count} records embedded with {args.model_kind} ({embeddings.shape[1]} dims) in "
          f"{seconds:.1f} s ({count / max(seconds, 1e-9):.1f} records/s) -> {output}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vnp embed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
