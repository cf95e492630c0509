"""Table text a block of rows at a time, without a Python string per cell (rank 0's tables).

A column of text is a uint8 matrix (rows, width): row i holds the i-th cell's bytes, with NUL
bytes wherever it is shorter than the widest (before, after, anywhere: they are dropped when the
rows are joined). `line_matrix` lays columns and constant pieces (bytes) side by side and ends
each row with a newline; `joined` drops the NULs and gives the bytes to write. No cell may hold a
NUL byte of its own: record IDs and input names cannot (`seqio` refuses control characters in
them), nor can packed letters.

Each formatter stands for one piece of Python formatting (`ints`: str(int), `fixed`: "%.6f",
`float32_shortest`: str(np.float32)), fast where that is exact and Python's own formatting for
the few values where it is not; tests/test_text.py checks each against the Python it stands for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

CELLS = 1 << 22  # bytes of text laid out at a time (rows x width), as far as single rows allow
MOST_ROWS = 1 << 16
_TENS = 10 ** np.arange(20, dtype=np.uint64)
_NEWLINE = 10


def blocks(n: int, widths: Callable[[slice], np.ndarray], lines: Callable[[slice], np.ndarray] | None = None,
           cells: int | None = None, most: int = MOST_ROWS) -> Iterator[slice]:
    """Consecutive slices of n items (items `s` of up to `widths(s)` bytes, each `lines(s)` rows,
    default 1) whose rows times their widest stay within `cells` (default CELLS; an item alone may
    exceed it), at most `most` items: memory stays flat however many rows and however wide one is."""
    cells = CELLS if cells is None else cells
    lo, window = 0, most
    while lo < n:
        ahead = slice(lo, min(n, lo + window))
        widest = np.maximum.accumulate(np.maximum(np.asarray(widths(ahead), dtype=np.int64), 1))
        rows = np.arange(1, ahead.stop - lo + 1) if lines is None else np.cumsum(lines(ahead), dtype=np.int64)
        take = max(1, int(np.searchsorted(widest * np.maximum(rows, 1), cells, side="right")))
        yield slice(lo, lo + take)
        lo += take
        window = min(most, 2 * take + 16)  # after a wide item, look no further ahead than needed


def ints(values: np.ndarray, digits: int | None = None) -> np.ndarray:
    """str(int) of integers; with `digits`, non-negative values zero-padded to that many (values
    below 10**digits)."""
    v = np.asarray(values)
    if len(v) and v.dtype.kind == "i" and int(v.min()) < 0:
        if digits is not None:
            raise ValueError("ints: zero-padded negative values")
        sign = np.where(v < 0, ord("-"), 0).astype(np.uint8)[:, None]
        return np.concatenate([sign, ints(np.where(v < 0, -v, v).astype(np.uint64))], axis=1)  # -(-2^63) as uint64
    top = int(v.max()) if len(v) else 0
    width = digits or len(str(top))
    x = v.astype(np.uint64 if top >= 1 << 32 else np.uint32)
    out = np.empty((width, len(v)), dtype=np.uint8)
    for j in range(width - 1, -1, -1):
        q = x // 10
        out[j] = x - q * 10
        x = q
    out += ord("0")
    if digits is None:  # no leading zeros
        places = np.searchsorted(_TENS[1:width], v.astype(np.uint64), side="right") + 1
        out[np.arange(width)[:, None] < (width - places)[None, :]] = 0
    return out.T


def cells(texts: Sequence[bytes] | np.ndarray) -> np.ndarray:
    """A column of given texts (bytes, or a numpy bytes array)."""
    array = np.asarray(texts, dtype=np.bytes_)
    if array.dtype.itemsize == 0 or not len(array):
        return np.zeros((len(array), 1), dtype=np.uint8)
    return np.ascontiguousarray(array).view(np.uint8).reshape(len(array), array.dtype.itemsize)


def choice(texts: Sequence[bytes], index: np.ndarray) -> np.ndarray:
    """texts[index[i]] for each row."""
    return cells(np.asarray(texts, dtype=np.bytes_)[np.asarray(index, dtype=np.intp)])


def with_texts(column: np.ndarray, rows: np.ndarray, texts: Sequence[bytes]) -> np.ndarray:
    """A copy of `column` with `rows` holding `texts` instead (widened when needed)."""
    if not len(rows):
        return column
    given = cells(texts)
    wider = np.zeros((len(column), max(given.shape[1], column.shape[1])), dtype=np.uint8)
    wider[:, :column.shape[1]] = column
    column = wider
    column[rows] = 0
    column[rows, :given.shape[1]] = given
    return column


def fixed(values: np.ndarray, decimals: int = 6) -> np.ndarray:
    """"%.{decimals}f" (decimals >= 1) of each value (its exact binary value, correctly rounded, as Python prints
    it), NaN as "NA". The digits come from rint(|x| * 10^decimals) in float64; where that product
    lies within two ulps of a half (a tie, or too close to tell), or is not below 2^52 (inf, large
    values), Python formats the value."""
    x = np.asarray(values, dtype=np.float64)
    scale = 10 ** decimals
    with np.errstate(invalid="ignore", over="ignore"):
        y = np.abs(x) * scale
        whole = np.floor(y)
        slow = ~(y < 2.0 ** 52) | (np.abs(y - whole - 0.5) <= 2 * np.spacing(y))
    n = np.where(slow, 0, np.rint(np.where(slow, 0, y))).astype(np.int64)
    integer, fraction = np.divmod(n, scale)
    sign = np.where(np.signbit(x), ord("-"), 0).astype(np.uint8)[:, None]
    column = np.concatenate([sign, ints(integer), np.full((len(x), 1), ord("."), np.uint8), ints(fraction, decimals)],
                            axis=1)
    rows = np.flatnonzero(slow)
    pattern = f"%.{decimals}f"
    return with_texts(column, rows, [b"NA" if v != v else (pattern % v).encode() for v in x[rows].tolist()])


_POWERS = 10.0 ** np.arange(13)  # exact in float64


def float32_shortest(values: np.ndarray) -> np.ndarray:
    """numpy's shortest float32 repr, `str(np.float32(v))` (as the original printed its scores).

    Values in [1e-4, 1) (classifier scores) are printed without numpy's per-value Dragon4: the
    shortest repr of x is the first k (decimal places) for which D = rint(x * 10^k) / 10^k rounds
    back to x in float32, i.e. lies between the midpoints to x's float32 neighbours (on a midpoint
    the even x wins). For k <= 12 every product is exact in float64 (24 + 28 bits), and the test
    is monotone in k, so k is found by bisection. Other values (0, 1, NaN, ...) take numpy's path.
    """
    x = np.asarray(values, dtype=np.float32)
    exact = x.astype(np.float64)
    fast = (exact >= 1e-4) & (exact < 1)  # compared as numpy does: float32(1e-4) < 1e-4 prints as 1e-04
    v, exact = x[fast], exact[fast]
    low = (exact + np.nextafter(v, np.float32(0)).astype(np.float64)) / 2
    high = (exact + np.nextafter(v, np.float32(1)).astype(np.float64)) / 2
    even = (v.view(np.uint32) & 1) == 0

    def rounded(k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scale = _POWERS[k]
        digits, a, b = np.rint(exact * scale), low * scale, high * scale
        return digits, ((digits > a) & (digits < b)) | (even & ((digits == a) | (digits == b)))

    fails, works = np.zeros(len(v), dtype=np.int64), np.full(len(v), 12, dtype=np.int64)
    while (open_ := works - fails > 1).any():
        middle = (fails + works) // 2
        ok = rounded(middle)[1]
        works, fails = np.where(open_ & ok, middle, works), np.where(open_ & ~ok, middle, fails)
    digits = rounded(works)[0].astype(np.uint64)
    places = np.zeros(len(x), dtype=np.int64)
    places[fast] = works  # "0." and `works` decimals: the digits after as many zeros as they lack
    shifted = np.zeros(len(x), dtype=np.uint64)
    shifted[fast] = digits * _TENS[12 - works]
    decimals = ints(shifted, 12)
    decimals[np.arange(12)[None, :] >= places[:, None]] = 0
    column = np.concatenate([np.tile(np.frombuffer(b"0.", np.uint8), (len(x), 1)), decimals], axis=1)
    others = np.flatnonzero(~fast)
    return with_texts(column, others, np.char.encode(x[others].astype(str), "ascii"))


def line_matrix(parts: Sequence[np.ndarray | bytes], n: int) -> np.ndarray:
    """Rows of `parts` side by side (a column, or bytes repeated on every row), each row ended by
    a newline."""
    widths = [len(p) if isinstance(p, bytes) else p.shape[1] for p in parts]
    out = np.empty((n, sum(widths) + 1), dtype=np.uint8)
    at = 0
    for part, width in zip(parts, widths):
        out[:, at:at + width] = np.frombuffer(part, np.uint8) if isinstance(part, bytes) else part
        at += width
    out[:, -1] = _NEWLINE
    return out


def lines(parts: Sequence[np.ndarray | bytes], n: int) -> bytes:
    """`line_matrix`, joined."""
    return joined(line_matrix(parts, n))


def stacked(n: int, pieces: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """n rows: for each (rows, matrix), matrix's rows placed at `rows` (the rest NUL)."""
    out = np.zeros((n, max((m.shape[1] for _, m in pieces), default=1)), dtype=np.uint8)
    for rows, matrix in pieces:
        out[rows, :matrix.shape[1]] = matrix
    return out


def joined(matrix: np.ndarray) -> bytes:
    """The rows' bytes, NULs dropped."""
    flat = matrix.ravel()
    return flat[flat != 0].tobytes()


def windows(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """data[starts[i]:starts[i] + lengths[i]] for each row (`data` must reach the widest end),
    a row at a time rather than a byte at a time."""
    width = max(int(lengths.max()), 1) if len(lengths) else 1
    if not len(starts):
        return np.zeros((0, width), dtype=np.uint8)
    if int(starts.max()) + width > len(data):  # the last rows reach past the end: pad a copy of the tail
        base = int(starts.min())
        data = np.concatenate([data[base:], np.zeros(int(starts.max()) + width - len(data), np.uint8)])
        starts = starts - base
    out = sliding_window_view(data, width)[starts]
    out[np.arange(width)[None, :] >= lengths[:, None]] = 0
    return out


class IdText:
    """Record IDs as the UTF-8 bytes of ids.txt: `column(records)` for the tables, `text(r)` for
    the few that need Python (escaping)."""

    def __init__(self, blob: bytes, starts: np.ndarray, lengths: np.ndarray):
        self.starts, self.lengths = np.asarray(starts, np.int64), np.asarray(lengths, np.int64)
        widest = int(self.lengths.max()) if len(self.lengths) else 0
        self.size = len(blob)
        self.data = np.frombuffer(blob + bytes(widest), np.uint8)

    @classmethod
    def read(cls, path: Path, offsets: np.ndarray) -> "IdText":
        """ids.txt (one ID a line) with the index's `id_offsets`; RuntimeError when they disagree."""
        blob = Path(path).read_bytes()
        offsets = np.asarray(offsets, np.int64)
        ends = offsets[1:] - 1
        if len(blob) != int(offsets[-1]) or (len(ends) and not (np.frombuffer(blob, np.uint8)[ends] == _NEWLINE).all()):
            count = blob.count(b"\n")
            raise RuntimeError(f"tables: {count} IDs for {len(ends)} records in the index")
        return cls(blob, offsets[:-1], ends - offsets[:-1])

    @classmethod
    def of(cls, ids: Sequence[str]) -> "IdText":
        encoded = [i.encode("utf-8") for i in ids]
        lengths = np.array([len(e) for e in encoded], dtype=np.int64)
        return cls(b"".join(encoded), np.cumsum(lengths) - lengths, lengths)

    def __len__(self) -> int:
        return len(self.starts)

    def column(self, records: np.ndarray) -> np.ndarray:
        return windows(self.data, self.starts[records], self.lengths[records])

    def text(self, record: int) -> str:
        start = int(self.starts[record])
        return self.data[start:start + int(self.lengths[record])].tobytes().decode("utf-8")

    def any_byte(self, table: np.ndarray) -> np.ndarray:
        """Per record: whether any byte b of its ID has table[b] (a bool array of 256)."""
        counts = np.concatenate(([0], np.cumsum(table[self.data[:self.size]], dtype=np.int64)))
        return counts[self.starts + self.lengths] > counts[self.starts]

    def starts_with(self, prefixes: Sequence[bytes]) -> np.ndarray:
        """Per record: whether its ID starts with any of `prefixes`."""
        found = np.zeros(len(self), dtype=bool)
        for prefix in prefixes:
            head = windows(self.data, self.starts, np.full(len(self), len(prefix)))
            found |= (self.lengths >= len(prefix)) & (head == np.frombuffer(prefix, np.uint8)).all(axis=1)
        return found
