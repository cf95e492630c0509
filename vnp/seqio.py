"""Reading FASTA and FASTQ, plain or compressed, one record at a time.

Every record is validated as it streams past, so bad input fails with one line that names the
file, the record and the line (see `vnp.errors.InputError`). The record ID is the header up to
the first whitespace, like Biopython's `record.id`.
"""

from __future__ import annotations

import bz2
import gzip
import itertools
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
_STRIPPED_LINES = _STRIPPED + b"\n"

SEQUENCE_SUFFIXES = (".fasta", ".fas", ".fna", ".ffn", ".fa", ".fastq", ".fq", ".seq")
COMPRESSION_SUFFIXES = (".gz", ".bgz", ".bz2", ".xz")


@dataclass(slots=True)
class Record:
    """One sequence: its ID, its letters as read (case kept) and where it starts in the file."""

    id: str
    seq: str
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


def _blocks(path: Path, size: int = 1 << 22) -> Iterator[bytes]:
    """The decompressed bytes of a file in large blocks; codec failures become InputError."""
    fh = open_binary(path)
    offset = 0
    try:
        with fh:
            while block := fh.read(size):
                offset += len(block)
                yield block
    except _CODEC_ERRORS as err:
        codec = compression_of(path) or "file"
        where_ = f" after {offset} decompressed bytes" if offset else ""
        raise InputError(f"{path}: truncated or corrupt {codec} data{where_} ({err})") from None


def _split_lines(first: bytes, blocks: Iterator[bytes], number: int) -> Iterator[tuple[int, bytes]]:
    """(line number, line without newline) over a block stream, starting at line `number`."""
    carry = b""
    for block in itertools.chain([first], blocks):
        lines = (carry + block).split(b"\n")
        carry = lines.pop()
        for line in lines:
            yield number, line
            number += 1
    if carry:
        yield number, carry


def iter_records(path: str | os.PathLike, nucleotides: bool = True) -> Iterator[Record]:
    """Stream the records of a FASTA or FASTQ file (format detected from its first letter).

    `nucleotides=False` (protein input of `vnp embed esm`) accepts any ASCII letters; the caller
    checks them against its alphabet."""
    path = Path(path)
    blocks = _blocks(path)
    data, newlines = b"", 0
    for block in blocks:  # skip leading blank lines, however many blocks they take
        data += block
        text = data.lstrip()
        newlines += data[: len(data) - len(text)].count(b"\n")
        data = text
        if data:
            break
    else:
        raise InputError(f"{path}: no records (only blank lines)")
    first_line = 1 + newlines
    if b"\x00" in data[:4096] or not data[:4096].isascii():
        raise InputError(f"{where(path, line=first_line)}: binary data, not a FASTA/FASTQ file")
    if data.startswith(b">"):
        records = _fasta_records(path, data, blocks, first_line, nucleotides)
    elif data.startswith(b"@"):
        records = _fastq_records(path, _split_lines(data, blocks, first_line), nucleotides)
    else:
        raise InputError(f"{where(path, line=first_line)}: not a FASTA/FASTQ file (expected '>' or '@', found {_show(data[:1])})")
    seen: set[str] = set()
    for record in records:
        if record.id in seen:
            raise InputError(f"{where(path, record.id, record.line)}: duplicate record ID (chunk IDs would be ambiguous)")
        seen.add(record.id)
        yield record


def _record_id(path: Path, header: bytes, line: int) -> str:
    fields = header[1:].split(None, 1)
    if not fields:
        raise InputError(f"{where(path, line=line)}: header has no record ID")
    if not fields[0].isascii() or b"\x00" in fields[0]:
        raise InputError(f"{where(path, line=line)}: binary data in a header")
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


def _fasta_texts(first: bytes, blocks: Iterator[bytes]) -> Iterator[bytes]:
    """Each record's text: '>' + header line + sequence lines (the newline before the next '>' dropped)."""
    current: list[bytes] = []
    for block in itertools.chain([first], blocks):
        if block[:1] == b">" and current and current[-1].endswith(b"\n"):
            current[-1] = current[-1][:-1]  # a record boundary falls exactly between two blocks
            yield b"".join(current)
            current = []
        pieces = block.split(b"\n>")
        current.append(pieces[0])
        for piece in pieces[1:]:
            yield b"".join(current)
            current = [b">", piece]
    yield b"".join(current)


def _fasta_records(path: Path, first: bytes, blocks: Iterator[bytes], line: int,
                   nucleotides: bool = True) -> Iterator[Record]:
    """FASTA records, read in large blocks: a record's letters are joined and checked in C calls."""
    for text in _fasta_texts(first, blocks):
        header, _, body = text.partition(b"\n")
        rid = _record_id(path, header, line)
        yield Record(rid, _fasta_letters(path, rid, line, body, nucleotides), line)
        line += text.count(b"\n") + 1


def _fasta_letters(path: Path, rid: str, header_line: int, body: bytes, nucleotides: bool = True) -> str:
    letters = body.translate(None, _STRIPPED_LINES)
    if letters.translate(None, NUCLEOTIDE_LETTERS) if nucleotides else b"\x00" in letters or not letters.isascii():
        # Slow path, only for bad input: find the line to name it.
        for offset, line in enumerate(body.split(b"\n"), start=1):
            if b"\x00" in line or not line.isascii():
                raise InputError(f"{where(path, rid, header_line + offset)}: binary data in a sequence line")
            if nucleotides:
                _check_letters(path, rid, header_line + offset, line.translate(None, _STRIPPED))
    return letters.decode("ascii")


def _fastq_records(path: Path, lines: Iterator[tuple[int, bytes]], nucleotides: bool = True) -> Iterator[Record]:
    """Four-line FASTQ records (@id, sequence, +, quality), blank lines between records allowed."""
    pending: tuple[int, bytes] | None = None
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
        if nucleotides:
            _check_letters(path, rid, seq_line, seq)
        qual = qual.rstrip(b"\r")
        if len(qual) != len(seq):
            raise InputError(
                f"{where(path, rid, qual_line)}: quality length {len(qual)} differs from sequence length {len(seq)}"
            )
        yield Record(rid, seq.decode("ascii"), header_line)


def _next_line(lines: Iterator[tuple[int, bytes]], path: Path, rid: str, what: str) -> tuple[int, bytes]:
    try:
        number, line = next(lines)
    except StopIteration:
        raise InputError(f"{where(path, rid)}: file ends before the record's {what} line") from None
    if b"\x00" in line or not line.isascii():
        raise InputError(f"{where(path, rid, number)}: binary data in a FASTQ record")
    return number, line
