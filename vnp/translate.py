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

FRAME_NAMES = ("F1", "F2", "F3", "R1", "R2", "R3")
_BASES = "TCAG"
_AMINO = "FFLLSSSSYY**CC*WLLLLPPPPHHQQRRRRIIIMTTTTNNKKSSRRVVVVAAAADDEEGGGG"  # NCBI table 1, TCAG order
_COMPLEMENT = str.maketrans("ACGTacgt", "TGCAtgca")  # ACGT only, as the original


def _code_table() -> np.ndarray:
    """Byte -> 0..3 for A, C, G, T in either case, 4 for anything else."""
    table = np.full(256, 4, dtype=np.uint8)
    for code, base in enumerate("ACGT"):
        table[ord(base)] = table[ord(base.lower())] = code
    return table


def _codon_tables() -> tuple[np.ndarray, np.ndarray]:
    """Codon index 25*a + 5*b + c (codes 0..4, at most 124) -> amino-acid byte, 0 where a code is
    4; the second table gives the amino acid of the codon's reverse complement."""
    forward = np.zeros(125, dtype=np.uint8)
    reverse = np.zeros(125, dtype=np.uint8)
    for i, first in enumerate(_BASES):
        for j, second in enumerate(_BASES):
            for k, third in enumerate(_BASES):
                a, b, c = ("ACGT".index(x) for x in (first, second, third))
                amino = ord(_AMINO[16 * i + 4 * j + k])
                forward[25 * a + 5 * b + c] = amino
                reverse[25 * (3 - c) + 5 * (3 - b) + (3 - a)] = amino
    return forward, reverse


CODE = _code_table()
CODON, CODON_RC = _codon_tables()
STOP = ord("*")


@dataclass(slots=True)
class Frame:
    """A kept reading frame of a chunk."""

    id: str  # `{chunk_id}F1` ... `{chunk_id}R3`
    index: int  # 0..5 for F1..R3
    nucleotide: str  # the original's slice, one base longer than the coding region
    protein: str


@dataclass(slots=True)
class Chunk:
    """A chunk of a sequence, with its 1-based inclusive coordinates on that sequence."""

    index: int  # 0-based position among all chunks of the run (or file), in input order
    record_id: str
    number: int  # 1-based position among the chunks of its record
    start: int  # 1-based
    end: int  # 1-based, inclusive
    seq: str  # letters as read (case kept), as the original's chunked file

    @property
    def id(self) -> str:
        """The original's chunk ID, `{record_id}_chunk_{number}`."""
        return chunk_id(self.record_id, self.number)


def reverse_complement(seq: str) -> str:
    """The original's reverse complement (only ACGT/acgt are complemented)."""
    return seq.translate(_COMPLEMENT)[::-1]


def chunks_of(record: Record, chunk_length: int, first_index: int = 0) -> Iterator[Chunk]:
    """The chunks of one record, by the original's overlap rule, numbered from `first_index`."""
    for span in chunk_spans(len(record.seq), chunk_length):
        yield Chunk(first_index + span.number - 1, record.id, span.number,
                    span.start + 1, span.end, record.seq[span.start:span.end])


def _frame_proteins(seqs: Sequence[str], length: int) -> list[list[bytes | None]]:
    """Proteins of frames F1..R3 for sequences that are all `length` long; None where a frame has
    a stop codon. One pass of array operations over the whole group."""
    rows = len(seqs)
    if length < 3:
        return [[b""] * 6 for _ in seqs]
    codes = CODE[np.frombuffer("".join(seqs).encode("ascii"), dtype=np.uint8).reshape(rows, length)]
    codon = 25 * codes[:, :-2] + 5 * codes[:, 1:-1] + codes[:, 2:]  # (B, length-2), codon at each position
    forward, reverse = CODON[codon], CODON_RC[codon]
    # F frame f reads codons at f, f+3, ...; R frame r reads the reverse complement's codons,
    # i.e. forward positions length-3-r, length-6-r, ... down to 0.
    frames = [forward[:, f::3] for f in range(3)]
    frames += [reverse[:, length - 3 - r::-3] if length - 3 - r >= 0 else reverse[:, :0] for r in range(3)]
    out: list[list[bytes | None]] = [[] for _ in seqs]
    for amino in frames:
        stops = (amino == STOP).any(axis=1)
        width = amino.shape[1]
        flat = np.ascontiguousarray(amino).tobytes()
        for r, row in enumerate(out):
            row.append(None if stops[r] else flat[r * width:(r + 1) * width].replace(b"\x00", b""))
    return out


def translate_chunks(chunks: Sequence[Chunk]) -> list[list[Frame]]:
    """Kept frames of every chunk, in F1..R3 order; vectorised over chunks of equal length."""
    by_length: dict[int, list[int]] = {}
    for i, chunk in enumerate(chunks):
        by_length.setdefault(len(chunk.seq), []).append(i)
    proteins: list[list[bytes | None]] = [[] for _ in chunks]
    for length, members in by_length.items():
        for i, row in zip(members, _frame_proteins([chunks[i].seq for i in members], length)):
            proteins[i] = row
    return [_kept_frames(chunk, row) for chunk, row in zip(chunks, proteins)]


def _kept_frames(chunk: Chunk, proteins: list[bytes | None]) -> list[Frame]:
    frames = []
    upper = reverse = None
    cid = chunk.id
    for index, protein in enumerate(proteins):
        if not protein:  # a stop codon (None) or nothing left to translate (b"")
            continue
        if index < 3:
            upper = upper or chunk.seq.upper()
            strand = upper
        else:
            reverse = reverse or reverse_complement(chunk.seq.upper())
            strand = reverse
        offset = index % 3 + 1  # the original's 1-based frame number on its strand
        nucleotide = strand[offset - 1:offset + 3 * len(protein)]
        frames.append(Frame(cid + FRAME_NAMES[index], index, nucleotide, protein.decode("ascii")))
    return frames


def batched_chunks(records: Iterable[Record], chunk_length: int, max_bases: int = 1 << 21) -> Iterator[list[Chunk]]:
    """Chunks of a record stream in lists of about `max_bases` bp (memory stays bounded)."""
    batch: list[Chunk] = []
    bases = index = 0
    for record in records:
        for chunk in chunks_of(record, chunk_length, index):
            index += 1
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

    def summary(self, name: str) -> str:
        return (f"{name}: {self.sequences} sequences, {self.chunks} chunks, {self.frames} kept frames, "
                f"{self.chunks_without_frames} chunks with no kept frame")


def _counted(records: Iterable[Record], counts: TranslateCounts) -> Iterator[Record]:
    for record in records:
        counts.sequences += 1
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
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="FASTA/FASTQ files (.gz, .bz2, .xz accepted) or unaligned BAM/CRAM")
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
    from vnp.cli import module_main

    return module_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
