"""The chunk plan: one validating pass over the inputs, then random access to any chunk.

Rank 0 reads every input once (FASTA or FASTQ, plain or compressed; unaligned BAM or CRAM),
validates it, and packs the sequences into `work/sequences.bin` (one byte per base, records back
to back) with a small index (`work/index.npz`: lengths and offsets, like a .fai, and where each ID
starts) and the record IDs
(`work/ids.txt`, one a line). Chunk boundaries depend only on sequence lengths, so every rank
derives the whole chunk plan from the index and then reads and translates only its own chunks.
Compressed input is thus decompressed once per run, not once per rank.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from vnp.seq.chunking import chunk_bounds, chunk_starts
from vnp.support.errors import InputError, where
from vnp.seq.seqio import RecordStart, alignment_format, check_readable, compression_of, iter_pieces
from vnp.seq.frames import Chunk, frame_residues
from vnp.support.atomic import AtomicFiles, WriteFailed
from vnp.support.paths import file_sha256

SEQUENCES = "sequences.bin"
INDEX = "index.npz"
IDS = "ids.txt"


def check_inputs(inputs: Sequence[str]) -> list[Path]:
    """Existence and distinctness of the inputs, before anything is read."""
    seen: dict[str, str] = {}
    paths = []
    for name in inputs:
        path = Path(name)
        check_readable(path)
        real = os.path.realpath(path)
        if real in seen:
            raise InputError(f"{name}: the same input is given twice (also as {seen[real]})")
        seen[real] = name
        paths.append(path)
    return paths


# Packing stops while this much space is left in the work folder, before the disk fills up.
MIN_FREE_BYTES = 64 << 20
SPACE_CHECK_EVERY = 64 << 20  # bytes written between two checks of the free space


def packed_problem(work_dir: Path, checksum: bool = True) -> str | None:
    """What is wrong with the packed inputs in `work_dir` (missing, cut, changed), or None. Sizes
    are compared with the index; with `checksum` the SHA-256 recorded at packing is verified too
    (one read of sequences.bin and ids.txt; an index of an older vnp has none to verify)."""
    index, sequences, ids = work_dir / INDEX, work_dir / SEQUENCES, work_dir / IDS
    for path in (index, sequences, ids):
        if not path.is_file():
            return f"{path}: missing"
    try:
        with np.load(index, allow_pickle=False) as data:
            expected = {sequences: int(data["lengths"].sum()), ids: int(data["id_offsets"][-1])}
            digests = {sequences: str(data["sequences_sha256"]), ids: str(data["ids_sha256"])} \
                if "sequences_sha256" in data.files else {}
    except Exception as err:  # any unreadable index: not to be trusted
        return f"{index}: unreadable ({type(err).__name__})"
    for path, size in expected.items():
        actual = path.stat().st_size
        if actual != size:
            return f"{path}: {actual} bytes where the index says {size} (cut or changed)"
    for path, digest in digests.items() if checksum else ():
        if file_sha256(path) != digest:
            return f"{path}: its content differs from the checksum recorded when it was packed"
    return None


def pack_inputs(inputs: Sequence[Path], work_dir: Path,
                read: Callable[[Path], Iterable[RecordStart | bytes]] | None = None) -> None:
    """Validate every input and write the packed sequences, index and IDs (atomically). `read`
    streams an input as record starts and letter pieces (default: FASTA/FASTQ/BAM/CRAM; training reads
    GenBank through `seqio.record_pieces`).

    Temporary files are removed whatever stops the packing (bad input, a full disk, a stop signal).
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    _check_space(work_dir, _plain_bytes(inputs), 0)
    try:
        with AtomicFiles() as files:  # the three files together, or none
            with files.open(work_dir / SEQUENCES, "wb") as seq_out, files.open(work_dir / IDS, "wb") as id_out:
                seq_sink, id_sink = _Hashed(seq_out), _Hashed(id_out)
                lengths, id_lengths, per_input, n_bases = _pack(inputs, seq_sink, id_sink, work_dir,
                                                                read or iter_pieces)
                seq_sink.flush()
                id_sink.flush()
            length_array = np.asarray(lengths, dtype=np.int64)
            offsets = np.concatenate(([0], np.cumsum(length_array)[:-1])).astype(np.int64)
            id_offsets = np.concatenate(([0], np.cumsum(np.asarray(id_lengths, dtype=np.int64) + 1))).astype(np.int64)
            with files.open(work_dir / INDEX, "wb") as fh:
                np.savez(fh, lengths=length_array, offsets=offsets, id_offsets=id_offsets,
                         records_per_input=np.asarray(per_input, dtype=np.int64),
                         n_bases=np.asarray(n_bases, dtype=np.int64),
                         sequences_sha256=np.asarray(seq_sink.hexdigest()), ids_sha256=np.asarray(id_sink.hexdigest()))
    except WriteFailed as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise InputError(f"{work_dir}: the disk is full while packing the inputs; free space there or "
                             "choose another output folder") from None
        raise


class _Hashed:
    """A binary file that also hashes what is written to it (the checksum the index records),
    written and hashed in pieces of about FLUSH bytes (a record's letters and ID are often a few
    hundred bytes: one write and one hash update each would cost more than the packing itself).
    `flush()` before the file is closed."""

    FLUSH = 1 << 20

    def __init__(self, fh):
        self.fh, self.digest, self.buffer = fh, hashlib.sha256(), bytearray()

    def write(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) >= self.FLUSH:
            self.flush()

    def flush(self) -> None:
        self.fh.write(self.buffer)
        self.digest.update(self.buffer)
        self.buffer.clear()

    def hexdigest(self) -> str:
        return self.digest.hexdigest()


TOKEN_BLOCK = 1 << 14  # chunks scanned at a time (memory: a few times TOKEN_BLOCK * chunk_length bytes)


def chunk_tokens(sequences: Path, lengths: np.ndarray, offsets: np.ndarray, chunk_length: int,
                 counts: np.ndarray | None = None) -> np.ndarray:
    """ESM tokens of the frames `translate_chunks` keeps of every chunk of the records (`lengths`,
    `offsets` into the packed `sequences`, `counts` chunks each as `chunk_bounds`), uint16: per
    kept frame its residues (at most MAX_RESIDUES) and 2 (BOS, EOS), as the ESM batches count
    them. A scan of the letters for stops (`frames.frame_residues`), no translation."""
    from vnp.models.esm import MAX_RESIDUES

    starts, ends = chunk_bounds(lengths, chunk_length, counts)
    counts = -(-np.asarray(lengths, dtype=np.int64) // chunk_length) if counts is None else counts
    first = np.asarray(offsets, dtype=np.int64)[np.repeat(np.arange(len(lengths)), counts)] + starts
    spans = ends - starts
    tokens = np.zeros(len(starts), dtype=np.uint16)  # at most 6 * (MAX_RESIDUES + 2)
    if not len(tokens):
        return tokens
    packed = np.memmap(sequences, dtype=np.uint8, mode="r")
    for lo in range(0, len(tokens), TOKEN_BLOCK):
        block = slice(lo, lo + TOKEN_BLOCK)
        base = int(first[block][0])
        region = np.asarray(packed[base:int((first[block] + spans[block]).max())])
        residues = frame_residues(_rows(region, first[block] - base, chunk_length), spans[block])
        tokens[block] = np.where(residues > 0, np.minimum(residues, MAX_RESIDUES) + 2, 0).sum(axis=1)
    return tokens


def _rows(region: np.ndarray, starts: np.ndarray, width: int) -> np.ndarray:
    """(N, width) letters of `region` from each start, padded past its end."""
    padded = np.concatenate([region, np.zeros(width, dtype=np.uint8)])
    return np.lib.stride_tricks.sliding_window_view(padded, width)[starts]


def _plain_bytes(inputs: Sequence[Path]) -> int:
    """A lower bound of the packed size: the sizes of the uncompressed text inputs (at most one
    byte per letter is packed, and the size of a compressed input, BAM and CRAM included, is known
    only once it is read)."""
    return sum(path.stat().st_size for path in inputs
               if compression_of(path) is None and alignment_format(path) is None)


def _check_space(work_dir: Path, needed: int, written: int) -> None:
    """Before packing (`needed`: a lower bound of the packed size) and every so often during it."""
    free = shutil.disk_usage(work_dir).free
    if free - needed >= MIN_FREE_BYTES:
        return
    if written:
        problem = (f"only {free >> 20} MiB are left after packing {written >> 20} MiB of the inputs (at least "
                   f"{MIN_FREE_BYTES >> 20} MiB must stay free)")
    else:
        mib = -(-(needed + MIN_FREE_BYTES) >> 20)
        problem = f"packing the inputs needs at least {mib} MiB free, {free >> 20} MiB are left"
    raise InputError(f"{work_dir}: {problem}; free space there or choose another output folder")


def _pack(inputs: Sequence[Path], seq_out: _Hashed, id_out: _Hashed, work_dir: Path, read) -> tuple[list, list, list, list]:
    """Stream every record into the packed files, piece by piece; (record lengths, ID lengths in
    bytes, records per input, N letters per record)."""
    lengths: list[int] = []
    id_lengths: list[int] = []
    n_bases: list[int] = []
    per_input: list[int] = []
    first_file: dict[str, Path] = {}
    written = next_check = 0
    for path in inputs:
        count = 0
        for piece in read(path):
            if isinstance(piece, bytes):
                seq_out.write(piece)
                lengths[-1] += len(piece)
                n_bases[-1] += piece.count(b"N") + piece.count(b"n")
                written += len(piece)
                if written >= next_check:
                    _check_space(work_dir, 0, written)
                    next_check = written + SPACE_CHECK_EVERY
                continue
            if piece.id in first_file and first_file[piece.id] == path:  # readers without their own check
                raise InputError(f"{where(path, piece.id, piece.line)}: duplicate record ID (chunk IDs would be "
                                 "ambiguous)")
            if piece.id in first_file:
                raise InputError(f"{where(path, piece.id, piece.line)}: record ID also used in "
                                 f"{first_file[piece.id]} (IDs must be unique across inputs)")
            first_file[piece.id] = path
            encoded = piece.id.encode("utf-8")
            id_out.write(encoded + b"\n")
            id_lengths.append(len(encoded))  # offsets into ids.txt are bytes
            lengths.append(0)
            n_bases.append(0)
            count += 1
        per_input.append(count)
    return lengths, id_lengths, per_input, n_bases


@dataclass
class ChunkPlan:
    """Every chunk of every record, derived lazily from the record lengths."""

    lengths: np.ndarray  # int64 [R]
    offsets: np.ndarray  # int64 [R], into sequences.bin
    first_chunk: np.ndarray  # int64 [R + 1]: chunks of record r are first_chunk[r] .. first_chunk[r+1]-1
    chunk_length: int
    id_offsets: np.ndarray  # int64 [R + 1]: the ID of record r is ids.txt bytes id_offsets[r] .. id_offsets[r+1]-2
    records_per_input: np.ndarray  # int64 [inputs]
    filtered: np.ndarray | None = None  # int8 [R]: vnp.seq.filters code, 0 = kept; filtered records have no chunks
    n_bases: np.ndarray | None = None  # int64 [R]: N (or n) letters per record

    @property
    def n_chunks(self) -> int:
        return int(self.first_chunk[-1])

    @property
    def n_records(self) -> int:
        return len(self.lengths)

    def n_units(self, unit_chunks: int) -> int:
        """Work units of `unit_chunks` consecutive chunks covering the plan."""
        return -(-self.n_chunks // unit_chunks)

    def unit_range(self, unit: int, unit_chunks: int) -> tuple[int, int]:
        """Global chunks [c0, c1) of a work unit (the last one may be shorter)."""
        return unit * unit_chunks, min((unit + 1) * unit_chunks, self.n_chunks)

    def record_of(self, chunks: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.first_chunk, chunks, side="right") - 1

    def spans(self, c0: int, c1: int) -> Iterator[tuple[int, int, int, int, int]]:
        """(global chunk, record, chunk number, start, end) for chunks c0 .. c1-1 (0-based, half-open)."""
        if c1 <= c0:
            return
        first_record, last_record = self.record_of(np.array([c0, c1 - 1]))
        for r in range(int(first_record), int(last_record) + 1):
            starts = chunk_starts(int(self.lengths[r]), self.chunk_length)
            base = int(self.first_chunk[r])
            for k in range(max(c0, base) - base, min(c1, int(self.first_chunk[r + 1])) - base):
                start = int(starts[k])
                yield base + k, r, k + 1, start, min(start + self.chunk_length, int(self.lengths[r]))


    def tokens(self, sequences: Path, c0: int, c1: int) -> np.ndarray:
        """ESM tokens of the kept frames of chunks c0 .. c1-1 (`chunk_tokens`), scanned from the
        packed `sequences`."""
        if c1 <= c0:
            return np.zeros(0, dtype=np.uint16)
        r0, r1 = (int(r) for r in self.record_of(np.array([c0, c1 - 1])))
        tokens = chunk_tokens(sequences, self.lengths[r0:r1 + 1], self.offsets[r0:r1 + 1], self.chunk_length,
                              np.diff(self.first_chunk)[r0:r1 + 1])
        skip = c0 - int(self.first_chunk[r0])
        return tokens[skip:skip + c1 - c0]

    def chunk_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """0-based start and exclusive end of every chunk of the plan (vectorised `spans`)."""
        return chunk_bounds(self.lengths, self.chunk_length, np.diff(self.first_chunk))


def load_plan(work_dir: Path, chunk_length: int, filters: dict | None = None) -> ChunkPlan:
    """The plan of the packed inputs; records failing `filters` (FilterConfig's keys) get no chunks."""
    from vnp.seq.filters import filter_codes

    with np.load(work_dir / INDEX, allow_pickle=False) as data:
        lengths, offsets, id_offsets = data["lengths"], data["offsets"], data["id_offsets"]
        per_input = data["records_per_input"]
        n_bases = data["n_bases"] if "n_bases" in data.files else np.zeros_like(lengths)
    filtered = filter_codes(lengths, n_bases, filters)
    counts = np.where((lengths > 0) & (filtered == 0), -(-lengths // chunk_length), 0)
    first = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    return ChunkPlan(lengths, offsets, first, chunk_length, id_offsets, per_input, filtered, n_bases)


def read_chunks(plan: ChunkPlan, sequences: Path, c0: int, c1: int) -> list[Chunk]:
    """The chunks c0 .. c1-1 with their letters and record IDs, read from the packed sequences
    and the IDs beside them (ids.txt in the same folder)."""
    spans = list(plan.spans(c0, c1))
    if not spans:
        return []
    records = sorted({s[1] for s in spans})
    ids = _read_ids(plan, sequences.with_name(IDS), records[0], records[-1] + 1)
    chunks = []
    with open(sequences, "rb") as fh:
        for record in records:
            mine = [s for s in spans if s[1] == record]
            lo, hi = mine[0][3], max(s[4] for s in mine)
            fh.seek(int(plan.offsets[record]) + lo)
            region = fh.read(hi - lo).decode("ascii")
            rid = ids[record - records[0]]
            for index, _, number, start, end in mine:
                chunks.append(Chunk(index, rid, number, start + 1, end, region[start - lo:end - lo]))
    return chunks


def _read_ids(plan: ChunkPlan, ids_path: Path, r0: int, r1: int) -> list[str]:
    """The IDs of records r0 .. r1-1, read in one piece."""
    lo, hi = int(plan.id_offsets[r0]), int(plan.id_offsets[r1])
    with open(ids_path, "rb") as fh:
        fh.seek(lo)
        return fh.read(hi - lo).decode("utf-8").split("\n")[:-1]


def iter_ids(work_dir: Path) -> Iterator[str]:
    """Record IDs in input order, streamed (rank 0 needs them only when writing tables)."""
    with open(work_dir / IDS, encoding="utf-8") as fh:
        for line in fh:
            yield line.rstrip("\n")
