"""Per-frame embeddings from FASTA: DNABERT-S over nucleotide frames, ESM2 over protein frames.

    vnp embed dnabert INPUT.fa -m MODEL -o OUT.npz [--max-tokens N] [--device cpu|cuda] [--precision fp32|bf16|fp16]
    vnp embed esm INPUT.faa -m MODEL [--layer N] -o OUT.npz [--attention sdpa|fair-esm] [...]
    python -m vnp.embed dnabert INPUT.fa -m MODEL -o OUT.npz

MODEL is a DNABERT-S folder or hub id (`zhihan1996/DNABERT-S`), or an ESM2 `.pt` or fair-esm name
(`esm2_t36_3B_UR50D`). The output `.npz` holds `ids` (unicode, input order) and `embeddings`
(float32, one row per record); `numpy.load(path, allow_pickle=False)` reads it. It is written to a
temporary name and renamed, so a failed run leaves no partial file.

Runs under the same launchers as `vnp predict` (torchrun, accelerate, srun) and shards the same
way: work units of `--batch-records` consecutive records are dealt to the ranks by a
DistributedSampler, embedded there, gathered to rank 0 step by step and written in input order as
they arrive, so no rank holds all the embeddings. Rank 0 first checks every record (IDs, letters)
before any model time is spent; each rank then streams the file once, embedding only its units.
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
import zipfile
import zlib
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol, Sequence

import numpy as np
import torch
from Bio.SeqIO.FastaIO import SimpleFastaParser

from vnp import dist as vdist
from vnp.errors import InputError, where
from vnp.gather import NO_UNIT, UnitResult, gather_step
from vnp.models import token_budget
from vnp.seqio import NUCLEOTIDE_LETTERS, open_binary

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
BATCH_RECORDS = 4096  # records per slice: tokenised, sorted by length and batched together

Records = Iterable[tuple[str, str]]  # (record ID, sequence)
SequenceCheck = Callable[[Path, str, str], str]  # (file, ID, sequence) -> sequence to embed


class Embedder(Protocol):
    """What DnabertEmbedder and EsmEmbedder share: sequences -> (N, dim) float32 in input order."""

    dim: int

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


class NpzRowWriter:
    """An .npz (`embeddings` float32 [n, dim], then `ids`) written row block by row block, so the
    rows never need to be in memory together; temporary until `close`, then renamed into place."""

    def __init__(self, path: Path, n: int, dim: int):
        self.path, self.n, self.rows = path, n, 0
        self.tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        self.zip = zipfile.ZipFile(self.tmp, "w", zipfile.ZIP_STORED, allowZip64=True)
        self.member = self.zip.open("embeddings.npy", "w", force_zip64=True)
        np.lib.format.write_array_header_1_0(self.member, {"descr": "<f4", "fortran_order": False, "shape": (n, dim)})

    def write(self, rows: np.ndarray) -> None:
        self.member.write(np.ascontiguousarray(rows, dtype="<f4").tobytes())
        self.rows += len(rows)

    def close(self, ids: Sequence[str]) -> None:
        if self.rows != self.n or len(ids) != self.n:
            raise RuntimeError(f"{self.path}: {self.rows} rows and {len(ids)} IDs written for {self.n} records")
        self.member.close()
        with self.zip.open("ids.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array(member, np.asarray(ids, dtype=np.str_))
        self.zip.close()
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        """Drop the temporary file if `close` did not happen."""
        try:
            self.zip.close()
        except Exception:
            pass
        self.tmp.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- CLI


def load_embedder(args: argparse.Namespace, device: torch.device) -> Embedder:
    """The model named by -m, on this rank's device in --precision."""
    dtype = PRECISIONS[args.precision]
    if args.model_kind == "dnabert":
        from vnp.models.dnabert import load_dnabert

        return load_dnabert(args.model, device=device, dtype=dtype)
    from vnp.models.esm import load_esm

    return load_esm(args.model, layer=args.layer, device=device, dtype=dtype, attention=args.attention)


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
        p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                       help="auto: cuda:LOCAL_RANK when CUDA is available, else cpu")
        p.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32")
        p.add_argument("--batch-records", type=int, default=BATCH_RECORDS,
                       help="records per work unit (the unit dealt to ranks and batched together)")
        p.add_argument("--timeout-s", type=float, default=1800.0, help="collective timeout between ranks")
    esm.add_argument("--layer", type=int, default=None, help="representation layer (default: the last)")
    esm.add_argument("--attention", choices=["sdpa", "fair-esm"], default="sdpa")


def run(args: argparse.Namespace) -> int:
    """One rank of an embedding job (a single process, or any launcher's ranks)."""
    if args.max_tokens is not None and args.max_tokens <= 0:
        return _fail(f"--max-tokens must be positive, got {args.max_tokens}", vdist.detect_env().rank)
    try:
        ctx = vdist.init(args.device, "auto", args.timeout_s)
    except RuntimeError as err:
        return _fail(str(err), vdist.detect_env().rank)
    try:
        return _embed_job(ctx, args)
    except InputError as err:
        return 2 if err.reported else _fail(str(err), ctx.rank)
    except vdist.PeerFailure:
        return 1  # the rank that failed has said why
    finally:
        vdist.cleanup()


def _fail(message: str, rank: int) -> int:
    print(f"vnp: error: {message}", file=sys.stderr)
    return 2


def _agree(ctx: vdist.Context, error: str | None) -> None:
    """Every rank learns whether any failed; the first failing rank reports, once."""
    errors = vdist.all_gather_object(ctx, error)
    if any(errors):
        first = next(r for r, e in enumerate(errors) if e)
        raise InputError(errors[first], reported=ctx.rank != first)


def _embed_job(ctx: vdist.Context, args: argparse.Namespace) -> int:
    path, output = Path(args.input), Path(args.output)
    error = None
    if ctx.is_main:
        try:
            check_output(output)
            open_binary(path).close()  # missing, unreadable or empty input fails before the model loads
        except InputError as err:
            error = str(err)
    _agree(ctx, error)
    embedder, error = None, None
    try:
        embedder = load_embedder(args, ctx.device)
    except InputError as err:
        error = f"rank {ctx.rank}: {err}" if ctx.world_size > 1 else str(err)
    _agree(ctx, error)
    check = nucleotide_check if args.model_kind == "dnabert" else protein_check(embedder.alphabet)
    ids, error = [], None
    if ctx.is_main:  # one checking pass over the whole input, before any model time is spent
        try:
            ids = [rid for rid, _ in checked_records(path, check)]
        except InputError as err:
            error = str(err)
    _agree(ctx, error)
    count = vdist.broadcast_object(ctx, len(ids))
    max_tokens = token_budget(args.model_kind, ctx.device.type, args.max_tokens or 0)
    start = time.perf_counter()
    writer = NpzRowWriter(output, count, embedder.dim) if ctx.is_main else None
    try:
        _run_units(ctx, path, check, embedder, max_tokens, count, args.batch_records, writer)
        if writer is not None:
            writer.close(ids)
    finally:
        if writer is not None:
            writer.discard()
    seconds = time.perf_counter() - start
    vdist.print0(ctx, f"{path}: {count} records embedded with {args.model_kind} ({embedder.dim} dims) on "
                      f"{ctx.world_size} rank(s) in {seconds:.1f} s ({count / max(seconds, 1e-9):.1f} records/s) "
                      f"-> {output}")
    return 0


def my_units(path: Path, check: SequenceCheck, units: list[int], size: int) -> Iterator[tuple[int, list[str]]]:
    """(unit, its sequences) for this rank's units, ascending, in one pass over the file."""
    wanted = iter(sorted(set(units)))
    unit = next(wanted, None)
    piece: list[str] = []
    for index, (_, seq) in enumerate(checked_records(path, check)):
        if unit is None:
            return
        if index // size == unit:
            piece.append(seq)
        if index == (unit + 1) * size - 1:
            yield unit, piece
            unit, piece = next(wanted, None), []
    if unit is not None:
        yield unit, piece  # the last, shorter unit


def _run_units(ctx, path: Path, check, embedder: Embedder, max_tokens: int, count: int, size: int,
               writer: NpzRowWriter | None) -> None:
    """Units of `size` records dealt by a DistributedSampler; rows gathered to rank 0 in order."""
    n_units = -(-count // size)
    slots = vdist.shard(n_units, ctx)
    mine = my_units(path, check, [u for u in slots if u is not None], size)
    dim = embedder.dim
    exchange = ctx.device if ctx.backend == "nccl" else torch.device("cpu")
    next_unit = 0
    for unit in slots:
        if unit is None:
            result = UnitResult(NO_UNIT, np.zeros(0, np.int64), np.zeros((0, dim), np.float32))
        else:
            got, seqs = next(mine)
            assert got == unit, (got, unit)
            rows = np.arange(unit * size, unit * size + len(seqs), dtype=np.int64)
            result = UnitResult(unit, rows, embedder.embed(seqs, max_tokens=max_tokens))
        try:
            results, _ = gather_step(result, dim, exchange, ctx.world_size, ctx.rank)
        except RuntimeError as err:
            raise vdist.PeerFailure(str(err)) from None
        for arrived in sorted((r for r in results if r.unit >= next_unit), key=lambda r: r.unit):
            if arrived.unit != next_unit:
                raise RuntimeError(f"unit {arrived.unit} arrived before unit {next_unit}")
            writer.write(arrived.embeddings)
            next_unit += 1
    if ctx.is_main and next_unit != n_units:
        raise RuntimeError(f"{n_units - next_unit} units of records were not embedded")


def main(argv: list[str] | None = None) -> int:
    from vnp.cli import module_main

    return module_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
