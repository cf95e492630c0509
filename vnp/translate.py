"""Six-frame translation of chunks and the original's frame selection (`vnp translate`).

    vnp translate INPUT... -L 500 -o DIR
    python -m vnp.translate INPUT... -L 500 -o DIR

For every input this writes the original VirNucPro intermediate files, `{stem}_chunked{L}.fa`,
`{stem}_identified_nucleotide.fa` and `{stem}_identified_protein.faa`, and prints a one-line
summary on stderr.

Selection rule (the original's prediction-mode `identify_seq`): frames F1, F2, F3 on the chunk and
R1, R2, R3 on its reverse complement, standard codon table; codons holding a letter other than
ACGT are dropped silently from the protein; a frame is kept when its protein is non-empty and has
no stop codon. Compatibility quirks kept on purpose (the published classifiers were trained so):
  * the stored nucleotide of a kept frame is one base longer than its coding region:
    `seq[f-1 : f + 3*len(protein)]` (F frames), the same slice of the reverse complement (R frames);
  * the reverse complement swaps only A/C/G/T; IUPAC codes such as R or Y stay as they are.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from vnp.chunking import chunk_id, chunk_spans
from vnp.errors import InputError, exit_on_input_error
from vnp.seqio import Record, input_stem, iter_records

HELP = "chunk and six-frame translate sequences (the original's intermediate files)"

FRAME_NAMES = ("F1", "F2", "F3", "R1", "R2", "R3")
_BASES = "TCAG"
_AMINO = "FFLLSSSSYY**CC*WLLLLPPPPHHQQRRRRIIIMTTTTNNKKSSRRVVVVAAAADDEEGGGG"  # NCBI table 1, TCAG order
_COMPLEMENT = str.maketrans("ACGTacgt", "TGCAtgca")  # ACGT only, as the original
_PAD = ord("N")  # pads short chunks; codons touching it are dropped like any ambiguous codon


def _code_table() -> np.ndarray:
    """Byte -> 0..3 for A, C, G, T (either case is upper-cased first), 4 for anything else."""
    table = np.full(256, 4, dtype=np.uint8)
    for code, base in enumerate("ACGT"):
        table[ord(base)] = code
    return table


def _codon_table() -> np.ndarray:
    """Codon index 25*a + 5*b + c (codes 0..4) -> amino-acid byte, 0 where a code is 4."""
    table = np.zeros(125, dtype=np.uint8)
    for i, first in enumerate(_BASES):
        for j, second in enumerate(_BASES):
            for k, third in enumerate(_BASES):
                codes = ["ACGT".index(b) for b in (first, second, third)]
                table[25 * codes[0] + 5 * codes[1] + codes[2]] = ord(_AMINO[16 * i + 4 * j + k])
    return table


CODE = _code_table()
CODON = _codon_table()
STOP = ord("*")


@dataclass(frozen=True)
class Frame:
    """A kept reading frame of a chunk."""

    id: str  # `{chunk_id}F1` ... `{chunk_id}R3`
    index: int  # 0..5 for F1..R3
    nucleotide: str  # the original's slice, one base longer than the coding region
    protein: str


@dataclass(frozen=True)
class Chunk:
    """A chunk of a sequence, with its 1-based inclusive coordinates on that sequence."""

    id: str
    record_id: str
    number: int
    start: int  # 1-based
    end: int  # 1-based, inclusive
    seq: str  # letters as read (case kept), as the original's chunked file


def reverse_complement(seq: str) -> str:
    """The original's reverse complement (only ACGT/acgt are complemented)."""
    return seq.translate(_COMPLEMENT)[::-1]


def chunks_of(record: Record, chunk_length: int) -> Iterator[Chunk]:
    """The chunks of one record, by the original's overlap rule."""
    for span in chunk_spans(len(record.seq), chunk_length):
        yield Chunk(chunk_id(record.id, span.number), record.id, span.number,
                    span.start + 1, span.end, record.seq[span.start:span.end])


def _strand_proteins(strands: Sequence[str], width: int) -> list[list[tuple[bytes, bool]]]:
    """For each strand (upper case) and frame 0..2: (protein bytes, has_stop), all rows at once."""
    padded = b"".join(s.encode("ascii").ljust(width, b"N") for s in strands)
    codes = CODE[np.frombuffer(padded, dtype=np.uint8).reshape(len(strands), width)]  # (B, W)
    per_row: list[list[tuple[bytes, bool]]] = [[] for _ in strands]
    for frame in range(3):
        n = (width - frame) // 3
        if n <= 0:
            for row in per_row:
                row.append((b"", False))
            continue
        first = codes[:, frame:frame + 3 * n:3].astype(np.intp)
        second = codes[:, frame + 1:frame + 3 * n:3]
        third = codes[:, frame + 2:frame + 3 * n:3]
        amino = CODON[25 * first + 5 * second + third]  # (B, n) amino-acid bytes, 0 = dropped
        stops = (amino == STOP).any(axis=1)
        flat = amino.tobytes()
        for r, row in enumerate(per_row):
            if stops[r]:
                row.append((b"", True))
            else:
                row.append((flat[r * n:(r + 1) * n].replace(b"\x00", b""), False))
    return per_row


def translate_chunks(chunks: Sequence[Chunk]) -> list[list[Frame]]:
    """Kept frames of every chunk, in F1..R3 order; vectorised over the whole list."""
    if not chunks:
        return []
    upper = [c.seq.upper() for c in chunks]
    reverse = [reverse_complement(s) for s in upper]
    width = max(len(s) for s in upper)
    forward_rows = _strand_proteins(upper, width)
    reverse_rows = _strand_proteins(reverse, width)
    result = []
    for chunk, fwd_seq, rev_seq, fwd, rev in zip(chunks, upper, reverse, forward_rows, reverse_rows):
        frames = []
        for index, (protein, stop) in enumerate(fwd + rev):
            if stop or not protein:
                continue
            strand = fwd_seq if index < 3 else rev_seq
            offset = index % 3 + 1  # the original's 1-based frame number on its strand
            nucleotide = strand[offset - 1:offset + 3 * len(protein)]
            frames.append(Frame(chunk.id + FRAME_NAMES[index], index, nucleotide, protein.decode("ascii")))
        result.append(frames)
    return result


def batched_chunks(records: Iterable[Record], chunk_length: int, max_bases: int = 1 << 21) -> Iterator[list[Chunk]]:
    """Chunks of a record stream in lists of about `max_bases` bp (memory stays bounded)."""
    batch: list[Chunk] = []
    bases = 0
    for record in records:
        for chunk in chunks_of(record, chunk_length):
            batch.append(chunk)
            bases += chunk_length
            if bases >= max_bases:
                yield batch
                batch, bases = [], 0
    if batch:
        yield batch


def fasta_wrapped(name: str, seq: str, width: int = 60) -> str:
    """One FASTA record as Biopython's writer formats it (60 letters a line)."""
    lines = [seq[i:i + width] for i in range(0, len(seq), width)]
    return f">{name}\n" + "".join(line + "\n" for line in lines)


@dataclass
class TranslateCounts:
    sequences: int = 0
    chunks: int = 0
    frames: int = 0
    chunks_without_frames: int = 0
    bases: int = 0

    def summary(self, name: str) -> str:
        return (f"{name}: {self.sequences} sequences, {self.chunks} chunks, {self.frames} kept frames, "
                f"{self.chunks_without_frames} chunks with no kept frame")


def _counted(records: Iterable[Record], counts: TranslateCounts) -> Iterator[Record]:
    for record in records:
        counts.sequences += 1
        counts.bases += len(record.seq)
        yield record


def translate_file(path: str | os.PathLike, out_dir: str | os.PathLike, chunk_length: int) -> TranslateCounts:
    """Write the three intermediate files of one input; nothing is left behind if it is bad."""
    stem = input_stem(path)
    out_dir = Path(out_dir)
    targets = [out_dir / f"{stem}_chunked{chunk_length}.fa",
               out_dir / f"{stem}_identified_nucleotide.fa",
               out_dir / f"{stem}_identified_protein.faa"]
    temps = [t.with_name(t.name + ".tmp") for t in targets]
    counts = TranslateCounts()
    try:
        with open(temps[0], "w") as chunked, open(temps[1], "w") as dna, open(temps[2], "w") as protein:
            for batch in batched_chunks(_counted(iter_records(path), counts), chunk_length):
                _write_batch(batch, translate_chunks(batch), chunked, dna, protein, counts)
    except BaseException:
        for temp in temps:
            temp.unlink(missing_ok=True)
        raise
    for temp, target in zip(temps, targets):
        os.replace(temp, target)
    return counts


def _write_batch(batch, frames_per_chunk, chunked, dna, protein, counts: TranslateCounts) -> None:
    chunked.write("".join(fasta_wrapped(c.id, c.seq) for c in batch))
    dna.write("".join(f">{f.id}\n{f.nucleotide}\n" for frames in frames_per_chunk for f in frames))
    protein.write("".join(f">{f.id}\n{f.protein}\n" for frames in frames_per_chunk for f in frames))
    counts.chunks += len(batch)
    counts.frames += sum(len(frames) for frames in frames_per_chunk)
    counts.chunks_without_frames += sum(1 for frames in frames_per_chunk if not frames)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="FASTA/FASTQ files (.gz, .bz2, .xz accepted)")
    parser.add_argument("-L", "--chunk-length", type=int, default=500,
                        help="chunk length in bp (300 and 500 match the published models; default 500)")
    parser.add_argument("-o", "--out-dir", required=True, help="output folder (created if needed)")


def _check_outputs(inputs: list[str], out_dir: Path) -> None:
    stems: dict[str, str] = {}
    for path in inputs:
        stem = input_stem(path)
        if stem in stems:
            same = os.path.realpath(stems[stem]) == os.path.realpath(path)
            problem = "given twice" if same else f"has the same name stem '{stem}' as {stems[stem]}"
            raise InputError(f"{path}: {problem}; its outputs would overwrite each other")
        stems[stem] = path
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: output folder is an existing file")


@exit_on_input_error
def run(args: argparse.Namespace) -> int:
    if args.chunk_length <= 0:
        raise InputError(f"--chunk-length must be a positive number of bp, got {args.chunk_length}")
    out_dir = Path(args.out_dir)
    _check_outputs(args.inputs, out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"{out_dir}: cannot create output folder ({err.strerror})") from None
    if not os.access(out_dir, os.W_OK):
        raise InputError(f"{out_dir}: output folder is not writable")
    failed = 0
    for path in args.inputs:
        try:
            counts = translate_file(path, out_dir, args.chunk_length)
        except InputError as err:
            print(f"vnp: error: {err}", file=sys.stderr)
            failed += 1
            continue
        print(counts.summary(path), file=sys.stderr)
    return 2 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vnp translate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
