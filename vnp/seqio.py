"""Reading FASTA and FASTQ, plain or compressed, one record at a time.

Every record is validated as it streams past, so bad input fails with one line that names the
file, the record and the line (see `vnp.errors.InputError`). The record ID is the header up to
the first whitespace, like Biopython's `record.id`.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from vnp.errors import InputError, where

# Magic bytes of the compressed formats we read.
_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bz2", b"\xfd7zXZ\x00": "xz"}
_OPENERS = {"gzip": gzip.open, "bz2": bz2.open, "xz": lzma.open}
# Decompressors raise these on truncated or corrupt streams.
_CODEC_ERRORS = (EOFError, OSError, zlib.error, lzma.LZMAError)

# IUPAC nucleotide codes (N and the ambiguity codes are valid; they are dropped from proteins).
NUCLEOTIDE_LETTERS = b"ACGTURYSWKMBDHVNacgturyswkmbdhvn"
# Biopython's FASTA parser removes these from sequence lines; so do we.
_STRIPPED = b" \t\r"

SEQUENCE_SUFFIXES = (".fasta", ".fas", ".fna", ".ffn", ".fa", ".fastq", ".fq", ".seq")
COMPRESSION_SUFFIXES = (".gz", ".bgz", ".bz2", ".xz")


@dataclass(frozen=True)
class Record:
    """One sequence: its ID, its letters as read (case kept) and where it starts in the file."""

    id: str
    seq: str
    number: int  # 1-based record number
    line: int  # 1-based line of the header


def compression_of(path: Path) -> str | None:
    """'gzip', 'bz2', 'xz' or None, from the file's first bytes (not its name)."""
    with open(path, "rb") as fh:
        head = fh.read(6)
    for magic, name in _MAGIC.items():
        if head.startswith(magic):
            return name
    return None


def input_stem(path: str | os.PathLike) -> str:
    """File name without its compression and FASTA/FASTQ suffixes: `reads.fq.gz` -> `reads`."""
    name = Path(path).name
    for suffixes in (COMPRESSION_SUFFIXES, SEQUENCE_SUFFIXES):
        for suffix in suffixes:
            if name.lower().endswith(suffix) and len(name) > len(suffix):
                name = name[: -len(suffix)]
                break
    return name


def check_readable(path: Path) -> None:
    """Fail early, with one line, on a path that cannot be an input file."""
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not a FASTA/FASTQ file")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: permission denied")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file (no records)")


def open_binary(path: str | os.PathLike) -> BinaryIO:
    """Open an input for reading bytes, decompressing gzip/bz2/xz as detected by magic bytes."""
    path = Path(path)
    check_readable(path)
    codec = compression_of(path)
    if codec is None:
        return open(path, "rb")
    return _OPENERS[codec](path, "rb")


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, line without its newline), turning codec failures into InputError."""
    fh = open_binary(path)
    number = 0
    try:
        with fh:
            for number, raw in enumerate(fh, start=1):
                yield number, raw.rstrip(b"\n")
    except _CODEC_ERRORS as err:
        codec = compression_of(path) or "file"
        raise InputError(f"{where(path, line=number + 1)}: truncated or corrupt {codec} data ({err})") from None


def _first_text_line(lines: Iterator[tuple[int, bytes]], path: Path) -> tuple[int, bytes] | None:
    """The first non-blank line, after checking the data is text at all."""
    for number, line in lines:
        if b"\x00" in line or not line.isascii():
            raise InputError(f"{where(path, line=number)}: binary data, not a FASTA/FASTQ file")
        if line.strip():
            return number, line
    return None


def iter_records(path: str | os.PathLike, check_duplicates: bool = True) -> Iterator[Record]:
    """Stream the records of a FASTA or FASTQ file (format detected from its first line)."""
    path = Path(path)
    lines = _lines(path)
    first = _first_text_line(lines, path)
    if first is None:
        raise InputError(f"{path}: no records (only blank lines)")
    number, line = first
    if line.startswith(b">"):
        records = _fasta_records(path, first, lines)
    elif line.startswith(b"@"):
        records = _fastq_records(path, first, lines)
    else:
        raise InputError(f"{where(path, line=number)}: not a FASTA/FASTQ file (expected '>' or '@', found {_show(line[:1])})")
    seen: set[str] = set()
    for record in records:
        if check_duplicates:
            if record.id in seen:
                raise InputError(f"{where(path, record.id, record.line)}: duplicate record ID (chunk IDs would be ambiguous)")
            seen.add(record.id)
        yield record


def _record_id(path: Path, header: bytes, line: int) -> str:
    fields = header[1:].split(None, 1)
    if not fields:
        raise InputError(f"{where(path, line=line)}: header has no record ID")
    return fields[0].decode("ascii")


def _check_letters(path: Path, rid: str, line_no: int, letters: bytes) -> None:
    bad = letters.translate(None, NUCLEOTIDE_LETTERS)
    if bad:
        char = bad[:1]
        column = letters.index(char) + 1
        raise InputError(
            f"{where(path, rid, line_no)}: invalid character {_show(char)} at column {column} "
            "(expected nucleotide letters: ACGTU, IUPAC ambiguity codes or N)"
        )


def _show(char: bytes) -> str:
    text = char.decode("ascii", "replace")
    return repr(text) if text.isprintable() and text else f"byte 0x{char.hex()}"


def _fasta_records(path: Path, first: tuple[int, bytes], lines: Iterator[tuple[int, bytes]]) -> Iterator[Record]:
    header_line, header = first
    rid = _record_id(path, header, header_line)
    parts: list[bytes] = []
    count = 0
    for number, line in lines:
        if line.startswith(b">"):
            count += 1
            yield Record(rid, b"".join(parts).decode("ascii"), count, header_line)
            header_line, rid, parts = number, _record_id(path, line, number), []
            continue
        if b"\x00" in line or not line.isascii():
            raise InputError(f"{where(path, rid, number)}: binary data in a sequence line")
        letters = line.translate(None, _STRIPPED)
        _check_letters(path, rid, number, letters)
        parts.append(letters)
    count += 1
    yield Record(rid, b"".join(parts).decode("ascii"), count, header_line)


def _fastq_records(path: Path, first: tuple[int, bytes], lines: Iterator[tuple[int, bytes]]) -> Iterator[Record]:
    """Four-line FASTQ records (@id, sequence, +, quality), blank lines between records allowed."""
    pending: tuple[int, bytes] | None = first
    count = 0
    while True:
        if pending is None:
            pending = next(((n, l) for n, l in lines if l.strip()), None)
            if pending is None:
                return
        header_line, header = pending
        pending = None
        if not header.startswith(b"@"):
            raise InputError(f"{where(path, line=header_line)}: expected a FASTQ header starting with '@'")
        rid = _record_id(path, header, header_line)
        seq_line, seq = _next_line(lines, path, rid, "sequence")
        plus_line, plus = _next_line(lines, path, rid, "'+' separator")
        if not plus.startswith(b"+"):
            raise InputError(f"{where(path, rid, plus_line)}: expected the '+' separator line (multi-line FASTQ is not supported)")
        qual_line, qual = _next_line(lines, path, rid, "quality")
        seq = seq.translate(None, _STRIPPED)
        _check_letters(path, rid, seq_line, seq)
        qual = qual.rstrip(b"\r")
        if len(qual) != len(seq):
            raise InputError(
                f"{where(path, rid, qual_line)}: quality length {len(qual)} differs from sequence length {len(seq)}"
            )
        count += 1
        yield Record(rid, seq.decode("ascii"), count, header_line)


def _next_line(lines: Iterator[tuple[int, bytes]], path: Path, rid: str, what: str) -> tuple[int, bytes]:
    try:
        number, line = next(lines)
    except StopIteration:
        raise InputError(f"{where(path, rid)}: file ends before the record's {what} line") from None
    if b"\x00" in line or not line.isascii():
        raise InputError(f"{where(path, rid, number)}: binary data in a FASTQ record")
    return number, line
