"""Six-frame translation of chunks and the original's frame selection.

Selection rule (the original's prediction-mode `identify_seq`): frames F1, F2, F3 on the chunk and
R1, R2, R3 on its reverse complement, standard codon table; codons holding a letter other than
ACGT are dropped silently from the protein; a frame is kept when its protein is non-empty and has
no stop codon. Compatibility quirks kept on purpose (the published classifiers were trained so):
  * the stored nucleotide of a kept frame is one base longer than its coding region:
    `seq[f-1 : f + 3*len(protein)]` (F frames), the same slice of the reverse complement (R frames);
  * the reverse complement swaps only A/C/G/T; IUPAC codes such as R or Y stay as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np

from vnp.seq.chunking import chunk_id, chunk_spans
from vnp.seq.seqio import Record

FRAME_NAMES = ("F1", "F2", "F3", "R1", "R2", "R3")


def frame_id(chunk: str, frame: int) -> str:
    """The original's frame ID, the only place one is built: the chunk ID (`chunking.chunk_id`)
    and the frame's name, e.g. `seq1_chunk_3R1` for frame 3 (0-based) of chunk 3 of seq1."""
    return chunk + FRAME_NAMES[frame]

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


def _codon_flags() -> np.ndarray:
    """Codon index -> bit 1: all ACGT (a residue), bit 2: a stop, bit 4: its reverse complement a stop."""
    return ((CODON != 0) | (CODON == STOP) * 2 | (CODON_RC == STOP) * 4).astype(np.uint8)


FLAGS = _codon_flags()


def frame_residues(letters: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Residues of the frames F1..R3 that `translate_chunks` keeps, 0 for those it drops (a stop
    codon, or no codon of ACGT), for chunks given as rows of letters (uint8 (N, W), each row's
    first `lengths[i]` letters; the rest is ignored): the proteins' lengths without translating.

    Frame F(f+1) reads the codons starting at positions p = f (mod 3), and R(r+1) the reverse
    complements of those at p = L - 3 - r (mod 3), all those with p <= L - 3 in both cases, so each
    of the three position classes gives one F and one R frame the same residues (codons of ACGT),
    each dropped on its own strand's stops.
    """
    rows, width = letters.shape
    lengths = np.asarray(lengths, dtype=np.int64)
    residues = np.zeros((rows, 6), dtype=np.int64)
    if width < 3 or not rows:
        return residues
    codes = CODE[letters]
    codes[np.arange(width) >= lengths[:, None]] = 4  # past a row's end: no codon
    flags = FLAGS[25 * codes[:, :-2] + 5 * codes[:, 1:-1] + codes[:, 2:]]  # (N, W-2), codon at each position
    counts = np.stack([(flags[:, c::3] & 1).sum(axis=1, dtype=np.int64) for c in range(3)], axis=1)  # (N, 3)
    stops = np.stack([np.bitwise_or.reduce(flags[:, c::3], axis=1) for c in range(3)], axis=1)
    every = np.arange(rows)
    for f in range(3):
        residues[:, f] = np.where(stops[:, f] & 2, 0, counts[:, f])
        c = (lengths - 3 - f) % 3
        residues[:, 3 + f] = np.where(stops[every, c] & 4, 0, counts[every, c])
    return residues


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
        frames.append(Frame(frame_id(cid, index), index, nucleotide, protein.decode("ascii")))
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
