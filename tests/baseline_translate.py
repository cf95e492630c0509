"""A straightforward per-codon dictionary implementation of the sequence stage's rules.

An independent oracle for the tests, and the baseline `make bench` measures vnp against
(benchmarks/bench_translate.py imports it from here; tests import nothing from benchmarks/).
It follows the rules as written (chunk, upper-case, six frames, drop ambiguous codons, keep
stop-free non-empty frames) with one dictionary look-up per codon.
"""

from __future__ import annotations

import itertools

_AMINO = "FFLLSSSSYY**CC*WLLLLPPPPHHQQRRRRIIIMTTTTNNKKSSRRVVVVAAAADDEEGGGG"
CODONS = {"".join(c): a for c, a in zip(itertools.product("TCAG", repeat=3), _AMINO)}
COMPLEMENT = {"A": "T", "C": "G", "G": "C", "T": "A"}


def spans(n: int, L: int) -> list[tuple[int, int]]:
    """Chunk [start, end) pairs, spreading the overlap as the original does."""
    if n == 0:
        return []
    count = -(-n // L)
    surplus = count * L - n
    step = int(surplus / count)
    extra = surplus - step * (count - 1)
    shifts = ([step + 1] * extra + [step] * max(0, count - 1 - extra) + [0])[:count]
    out, moved = [], 0
    for k in range(count):
        start = k * L - moved if k * L > 1 else k * L
        out.append((start, min(start + L, n)))
        moved += shifts[k]
    return out


def revcomp(seq: str) -> str:
    return "".join(COMPLEMENT.get(b, b) for b in reversed(seq))


def frames(chunk_id: str, seq: str) -> list[tuple[str, str, str]]:
    """(frame id, nucleotide slice, protein) of the kept frames."""
    seq = seq.upper()
    kept = []
    for strand_name, strand in (("F", seq), ("R", revcomp(seq))):
        for f in range(3):
            protein = "".join(CODONS.get(strand[i:i + 3], "") for i in range(f, len(strand) - 2, 3))
            if protein and "*" not in protein:
                kept.append((f"{chunk_id}{strand_name}{f + 1}", strand[f:f + 1 + 3 * len(protein)], protein))
    return kept


def translate_records(records, L: int):
    """Yield (chunk id, chunk seq, kept frames) for (id, seq) records."""
    for rid, seq in records:
        for k, (start, end) in enumerate(spans(len(seq), L), start=1):
            cid = f"{rid}_chunk_{k}"
            yield cid, seq[start:end], frames(cid, seq[start:end])
