"""Per-frame embeddings from FASTA: DNABERT-S over nucleotide frames, ESM2 over protein frames.

    vnp embed dnabert INPUT.fa -m MODEL -o OUT.npz [--max-tokens N] [--device cpu|cuda] [--precision auto|fp32|bf16|fp16]
    vnp embed esm INPUT.faa -m MODEL [--layer N] -o OUT.npz [--attention sdpa|fair-esm] [...]
    python -m vnp.embed dnabert INPUT.fa -m MODEL -o OUT.npz

MODEL is a DNABERT-S folder or hub id (`zhihan1996/DNABERT-S`), or an ESM2 `.pt` or fair-esm name
(`esm2_t36_3B_UR50D`). The output `.npz` holds `ids` (unicode, input order) and `embeddings`
(float32, one row per record); `numpy.load(path, allow_pickle=False)` reads it. It is written to a
temporary name and renamed, so a failed run leaves no partial file.

Runs under the same launchers as `vnp predict` (torchrun, accelerate, srun), on the same engine
(vnp/run/engine.py): work units of `--batch-records` consecutive records are dealt to the ranks by a
DistributedSampler in input order, prepared on a helper thread, embedded, sent to rank 0 with
asynchronous fixed-shape collectives and written in input order as they arrive, so no rank holds
all the embeddings. Input goes through the project's reader (vnp/seq/seqio.py: FASTA or FASTQ, plain or
compressed, the same checks and messages as `vnp predict`); every rank first checks every record
before any forward pass (all at once: no rank waits in a collective, bounded by --timeout-s, while
another reads the input alone), then streams the file once more, embedding only its units.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import sys
import time
import zipfile
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol, Sequence

import numpy as np
import torch

from vnp.run import dist as vdist
from vnp.support.atomic import AtomicFiles
from vnp.run.lifecycle import run_rank
from vnp.run.engine import RowSink, StopFlag, run_units
from vnp.support.config import EngineConfig
from vnp.support.command import command, module_main
from vnp.support.errors import InputError, where
from vnp.run.exchange import Computed, UnitResult
from vnp.models import PRECISIONS, resolve_precision, torch_dtype
from vnp.models.memory import token_budget
from vnp.seq.seqio import iter_records, open_binary

BATCH_RECORDS = 4096  # records per slice: tokenised, sorted by length and batched together

Records = Iterable[tuple[str, str]]  # (record ID, sequence)
SequenceCheck = Callable[[Path, str, str], str]  # (file, ID, sequence) -> sequence to embed


class Embedder(Protocol):
    """What DnabertEmbedder and EsmEmbedder share: sequences -> (N, dim) float32 in input order."""

    dim: int

    def embed(self, seqs: Sequence[str], max_tokens: int) -> np.ndarray: ...

    def prepare(self, seqs: Sequence[str], max_tokens: int): ...  # CPU half (a helper thread)

    def run(self, prepared) -> torch.Tensor: ...  # device half: (N, dim) float32 on the device


# ----------------------------------------------------------------------------- reading


def checked_records(path: Path, check: SequenceCheck) -> Iterator[tuple[str, str]]:
    """(ID, sequence) of each record, in file order, read by the project's reader (vnp.seq.seqio:
    FASTA or FASTQ, plain or compressed, the same validation and messages as `vnp predict`).

    Raises InputError, naming the file and record, on what the reader refuses (missing or empty
    file, no records, header without ID, duplicate ID, binary data, letters that are not
    nucleotides for `nucleotide_check`), on an empty sequence, or on what `check` refuses.
    """
    for record in iter_records(path, nucleotides=getattr(check, "nucleotides", False)):
        if not record.seq:
            raise InputError(f"{where(path, record.id, record.line)}: empty sequence")
        yield record.id, check(path, record.id, record.seq)


def nucleotide_check(path: Path, rid: str, seq: str) -> str:
    """Upper-cased sequence (the reader has checked its IUPAC nucleotide letters)."""
    return seq.upper()


nucleotide_check.nucleotides = True  # the reader checks the letters


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
        self.files = AtomicFiles()
        self.tmp = self.files.temporary(path)
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
        self.files.commit()

    def discard(self) -> None:
        """Drop the temporary file if `close` did not happen."""
        try:
            self.zip.close()
        except Exception:
            pass
        self.files.discard()


# ----------------------------------------------------------------------------- CLI


def load_embedder(args: argparse.Namespace, device: torch.device) -> Embedder:
    """The model named by -m, on this rank's device in --precision."""
    dtype = torch_dtype(resolve_precision(args.precision, device))
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
        p.add_argument("--precision", choices=["auto", *PRECISIONS], default="auto",
                       help="auto: bf16 on GPU, fp32 on CPU (as vnp predict)")
        p.add_argument("--batch-records", type=int, default=BATCH_RECORDS,
                       help="records per work unit (the unit dealt to ranks and batched together)")
        p.add_argument("--timeout-s", type=float, default=1800.0, help="collective timeout between ranks")
    esm.add_argument("--layer", type=int, default=None, help="representation layer (default: the last)")
    esm.add_argument("--attention", choices=["sdpa", "fair-esm"], default="sdpa")


@command
def run(args: argparse.Namespace) -> int:
    """One rank of an embedding job (a single process, or any launcher's ranks), in the rank
    lifecycle (`vnp.run.lifecycle.run_rank`). Not resumable: a stop signal ends it at once, and
    with no output folder there is no log (an unexpected error's traceback goes to stderr)."""
    if args.max_tokens is not None and args.max_tokens <= 0:
        raise InputError(f"--max-tokens must be positive, got {args.max_tokens}")
    return run_rank(lambda rank: _embed_job(rank.ctx, args), args.device, "auto", args.timeout_s, stoppable=False)


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
    # One checking pass over the whole input before any forward pass, on every rank at once (each
    # streams the file anyway): no rank waits in a collective, which --timeout-s bounds, while
    # another reads a huge input alone.
    ids, count, error = [], 0, None
    try:
        for rid, _ in checked_records(path, check):
            count += 1
            if ctx.is_main:  # the IDs only rank 0 writes
                ids.append(rid)
    except InputError as err:
        error = str(err)
    _agree(ctx, error)  # the same error on every rank: rank 0, the first, says it
    # the same budget on every rank (the smallest card's), so a record's vector does not depend on its rank
    max_tokens = min(vdist.all_gather_object(ctx, token_budget(args.model_kind, embedder, args.max_tokens or 0)))
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


class RecordWork:
    """The engine's work for `vnp embed`: units of `size` consecutive records, in input order.

    `prepare` is called for ascending units (input-order dealing), so one forward pass over the
    file serves every unit of this rank.
    """

    def __init__(self, path: Path, check: SequenceCheck, embedder, max_tokens: int, count: int, size: int):
        self.path, self.check, self.embedder, self.max_tokens = path, check, embedder, max_tokens
        self.count, self.size = count, size
        self.dim = embedder.dim
        self.rows = size
        self.records: Iterator[tuple[int, tuple[str, str]]] | None = None

    def units(self) -> range:
        return range(-(-self.count // self.size))

    def costs(self, units) -> None:
        return None  # input order: the .npz is written as the rows arrive

    def _sequences(self, unit: int) -> list[str]:
        if self.records is None:
            self.records = enumerate(checked_records(self.path, self.check))
        first, last = unit * self.size, min((unit + 1) * self.size, self.count)
        seqs = []
        for index, (_, seq) in self.records:
            if index >= first:
                seqs.append(seq)
            if index == last - 1:
                break
        if len(seqs) != last - first:
            raise RuntimeError(f"{self.path}: unit {unit} has {len(seqs)} records, expected {last - first}")
        return seqs

    def prepare(self, unit: int):
        seqs = self._sequences(unit)
        return len(seqs), self.embedder.prepare(seqs, self.max_tokens)

    def compute(self, unit: int, prepared) -> Computed:
        rows, batches = prepared
        keys = np.arange(unit * self.size, unit * self.size + rows, dtype=np.int64)
        return Computed(unit, keys, self.embedder.run(batches))


class NpzSink(RowSink):
    """Rank 0's sink for `vnp embed`: rows written into the .npz in input order as units arrive."""

    def __init__(self, writer: NpzRowWriter):
        self.writer, self.next_unit = writer, 0

    def consume(self, results: list[UnitResult]) -> None:
        for result in results:
            if result.unit != self.next_unit:
                raise RuntimeError(f"unit {result.unit} arrived before unit {self.next_unit}")
            self.writer.write(result.embeddings)
            self.next_unit += 1

    def close(self) -> None:
        pass


def _run_units(ctx, path: Path, check, embedder: Embedder, max_tokens: int, count: int, size: int,
               writer: NpzRowWriter | None) -> None:
    """Units of `size` records through the engine in input order; rows streamed into the .npz."""
    work = RecordWork(path, check, embedder, max_tokens, count, size)
    sink = NpzSink(writer) if writer is not None else None
    stop = StopFlag()  # embed is not resumable: a signal ends it as before
    run_units(ctx, work, sink, stop, EngineConfig(balance=False))


def main(argv: list[str] | None = None) -> int:
    return module_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
