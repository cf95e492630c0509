"""Reading FASTA and FASTQ, plain or compressed, and unaligned BAM or CRAM, one record at a time.

Every record is validated as it streams past, so bad input fails with one line that names the
file, the record and the line (see `vnp.support.errors.InputError`). The record ID is the header
up to the first whitespace, like Biopython's `record.id`; in BAM/CRAM it is the read name, with
`/1` or `/2` appended for reads flagged READ1 or READ2 (the two reads of a pair share a name), as
`samtools fastq -N` writes them.
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import itertools
import lzma
import os
import stat
import unicodedata
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

from vnp.support.errors import InputError, where
from vnp.support.paths import kind_of

UTF8_BOM = b"\xef\xbb\xbf"
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

SEQUENCE_SUFFIXES = (".fasta", ".fas", ".fna", ".ffn", ".fa", ".fastq", ".fq", ".seq", ".bam", ".cram")
# SAM flags (the SAM specification, section 1.4).
_READ1, _READ2 = 0x40, 0x80
_NOT_PRIMARY = 0x100 | 0x800  # secondary and supplementary records repeat a read

COMPRESSION_SUFFIXES = (".gz", ".bgz", ".bz2", ".xz")


@dataclass(slots=True)
class Record:
    """One sequence: its ID, its letters as read (case kept) and where it starts in the file."""

    id: str
    seq: str
    line: int | None  # 1-based line of the header; None in BAM/CRAM (no lines)


def fasta_record(name: str, letters: str, width: int = 60) -> str:
    """One FASTA record, `width` letters a line (as Biopython's writer formats it): translate's
    chunks and the demo's data. The result FASTA files hold the same bytes, written a block of
    records at a time by results.tables (tests/test_text.py compares the two)."""
    return f">{name}\n" + "".join(letters[i:i + width] + "\n" for i in range(0, len(letters), width))


def compression_of(path: Path) -> str | None:
    """'gzip', 'bz2', 'xz' or None, from the file's first bytes (not its name)."""
    with open(path, "rb") as fh:
        head = fh.read(6)
    for magic, name in _MAGIC.items():
        if head.startswith(magic):
            return name
    return None


def alignment_format(path: Path) -> str | None:
    """'BAM' or 'CRAM' from the file's first bytes (a BAM is BGZF, i.e. gzip, holding `BAM\\1`),
    else None."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head == b"CRAM":
        return "CRAM"
    if not head.startswith(b"\x1f\x8b"):
        return None
    try:
        with gzip.open(path, "rb") as fh:
            return "BAM" if fh.read(4) == b"BAM\x01" else None
    except _CODEC_ERRORS:
        return None  # the text reader names the corrupt gzip data


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
    """Fail early, with one line, on a path that cannot be an input file.

    Only regular files: rank 0 reads an input twice (its digest, then its records), and a pipe,
    process substitution or device can be read once at most, or blocks forever.
    """
    bad = control_character(str(path))
    if bad is not None:  # the name is shown escaped: printed raw it could rewrite the terminal
        raise InputError(f"{ascii(str(path))}: the file name contains the control character {bad}")
    try:
        info = path.stat()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as err:
        raise InputError(f"{path}: cannot read ({err.strerror})") from None
    if stat.S_ISDIR(info.st_mode):
        raise InputError(f"{path}: is a directory, not a FASTA/FASTQ file")
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"{path}: is {kind_of(info.st_mode)}, not a regular file; save the input to a file first")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: permission denied")
    if info.st_size == 0:
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


def _unix_line_ends(blocks: Iterator[bytes]) -> Iterator[bytes]:
    """The blocks with Windows (CR LF) and old Mac (CR alone) line ends made LF, so that every
    reader sees the same lines (a CR-only file would otherwise read as one long header)."""
    carry = b""
    for block in blocks:
        block = carry + block
        carry = b""
        if b"\r" not in block:
            yield block
            continue
        if block.endswith(b"\r"):  # its LF, if any, is in the next block
            block, carry = block[:-1], b"\r"
        yield block.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    if carry:
        yield b"\n"


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


@dataclass(slots=True)
class RecordStart:
    """The start of a record in a piece stream (its letters follow as `bytes` pieces)."""

    id: str
    line: int | None  # 1-based line of the header; None in BAM/CRAM


def iter_pieces(path: str | os.PathLike, nucleotides: bool = True) -> Iterator[RecordStart | bytes]:
    """Stream a FASTA, FASTQ, BAM or CRAM file (format detected from its first bytes) as a
    RecordStart per record followed by its validated letters in pieces of at most a few MiB: a
    record of any length is never held whole (`vnp.run.plan` packs them this way).
    `nucleotides=False` (protein input of `vnp embed esm`) accepts any ASCII letters; the caller
    checks them against its alphabet."""
    path = Path(path)
    check_readable(path)
    kind = alignment_format(path)
    pieces = _alignment_pieces(path, kind, nucleotides) if kind else _text_pieces(path, nucleotides)
    seen: set[str] = set()
    for piece in pieces:
        if isinstance(piece, RecordStart):
            if piece.id in seen:
                problem = "duplicate record ID (chunk IDs would be ambiguous)"
                raise InputError(f"{where(path, piece.id, piece.line)}: {problem}")
            seen.add(piece.id)
        yield piece


def _text_pieces(path: Path, nucleotides: bool) -> Iterator[RecordStart | bytes]:
    """FASTA or FASTQ, told apart by the first letter after blank lines and a byte order mark."""
    blocks = _unix_line_ends(_blocks(path))
    data, newlines = b"", 0
    for block in blocks:  # skip a UTF-8 byte order mark and leading blank lines, however many blocks
        data += block.removeprefix(UTF8_BOM) if not newlines and not data else block
        text = data.lstrip()
        newlines += data[: len(data) - len(text)].count(b"\n")
        data = text
        if data:
            break
    else:
        raise InputError(f"{path}: no records (only blank lines)")
    first_line = 1 + newlines
    if not _is_text(data[:4096]):
        raise InputError(f"{where(path, line=first_line)}: binary data, not a FASTA/FASTQ file")
    if data.startswith(b">"):
        pieces = _fasta_pieces(path, data, blocks, first_line, nucleotides)
    elif data.startswith(b"@"):
        pieces = _fastq_pieces(path, _split_lines(data, blocks, first_line), nucleotides)
    else:
        found = _show(data[:1])
        raise InputError(f"{where(path, line=first_line)}: not a FASTA/FASTQ file (expected '>' or '@', found {found})")
    return pieces


def _alignment_pieces(path: Path, kind: str, nucleotides: bool) -> Iterator[RecordStart | bytes]:
    """The reads of a BAM or CRAM file in file order, as sequenced (a read stored reverse
    complemented, flag 0x10, is turned back), secondary and supplementary records skipped: the
    reads `samtools fastq -N` writes. Unaligned files need no reference; an aligned CRAM needs
    its reference where htslib looks for it (REF_PATH, REF_CACHE)."""
    import pysam  # only BAM/CRAM input pays for it

    pysam.set_verbosity(0)  # htslib's own warnings would add lines to the one-line error
    count = 0
    try:
        with pysam.AlignmentFile(str(path), "rb" if kind == "BAM" else "rc", check_sq=False) as reads:
            for read in reads.fetch(until_eof=True):  # no index, no reference needed
                if read.flag & _NOT_PRIMARY:
                    continue
                count += 1
                rid = _read_id(path, read, count)
                yield RecordStart(rid, None)
                letters = (read.get_forward_sequence() or "").encode("ascii")
                if nucleotides:
                    _check_letters(path, rid, None, letters)
                yield letters
    except (OSError, ValueError, StopIteration) as err:
        after = f" after {count} reads" if count else ""
        # htslib reports a stream cut inside a block as a failed close carrying whatever errno was
        # last set ("Closing failed: Success", or ENOENT from an earlier lookup): no detail
        stale = isinstance(err, OSError) and err.errno is not None and "Closing failed" in str(err)
        detail = "" if stale else f" ({err})"
        raise InputError(f"{path}: truncated or corrupt {kind} data{after}{detail}") from None


def _read_id(path: Path, read, number: int) -> str:
    """The read name, `/1` or `/2` appended for the READ1 or READ2 flag (mates share a name)."""
    name = read.query_name
    if not name:
        raise InputError(f"{path}: read {number} has no name")
    bad = control_character(name)
    if bad is not None:
        raise InputError(f"{path}: read {number}: the read name contains the control character {bad}")
    return name + ("/1" if read.flag & _READ1 else "/2" if read.flag & _READ2 else "")


def record_pieces(records: Iterable[Record]) -> Iterator[RecordStart | bytes]:
    """Whole records as the piece stream `iter_pieces` gives (for readers of other formats)."""
    for record in records:
        yield RecordStart(record.id, record.line)
        yield record.seq.encode("ascii")


def iter_records(path: str | os.PathLike, nucleotides: bool = True) -> Iterator[Record]:
    """Stream the records of a FASTA or FASTQ file, each whole (`nucleotides`: see iter_pieces)."""
    start, letters = None, []
    for piece in iter_pieces(path, nucleotides):
        if isinstance(piece, bytes):
            letters.append(piece)
            continue
        if start is not None:
            yield Record(start.id, b"".join(letters).decode("ascii"), start.line)
        start, letters = piece, []
    if start is not None:
        yield Record(start.id, b"".join(letters).decode("ascii"), start.line)


def _is_text(head: bytes) -> bool:
    """No NUL byte and valid UTF-8 (a character cut at the end of `head` is fine)."""
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    return b"\x00" not in head


def _record_id(path: Path, header: bytes, line: int) -> str:
    """The ID of a header line: UTF-8 text up to the first whitespace, without control characters
    (an ANSI escape in an ID would be written raw into every table)."""
    try:
        text = header[1:].decode("utf-8")
    except UnicodeDecodeError as err:
        problem = f"binary data in a header (not UTF-8 at column {err.start + 2})"
        raise InputError(f"{where(path, line=line)}: {problem}") from None
    fields = text.split(None, 1)
    if not fields:
        raise InputError(f"{where(path, line=line)}: header has no record ID")
    bad = control_character(fields[0])
    if bad is not None:
        raise InputError(f"{where(path, line=line)}: record ID contains the control character {bad}")
    return fields[0]


def control_character(text: str) -> str | None:
    """The first control, format or line-separator character of `text` as U+XXXX, else None:
    such a character written raw into a table or a terminal can rewrite what is shown."""
    if text.isascii() and text.isprintable():  # the usual ID: printable ASCII holds none of them
        return None
    bad = next((c for c in text if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")), None)
    return None if bad is None else f"U+{ord(bad):04X}"


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


MAX_HEADER_BYTES = 1 << 20


def _fasta_pieces(path: Path, first: bytes, blocks: Iterator[bytes], line: int,
                  nucleotides: bool = True) -> Iterator[RecordStart | bytes]:
    """FASTA records as pieces, read in large blocks: each block's letters are checked in C calls.

    A block is cut at every record start (a newline followed by '>'); `line` follows the line of
    the current position, for error messages.
    """
    header: list[bytes] | None = None  # the current header line while it is incomplete
    start = RecordStart("", line)
    ended_line = True  # the previous block ended a line (the file starts with '>')
    for block in itertools.chain([first], blocks):
        segments = block.split(b"\n>")
        starts = [False] + [True] * (len(segments) - 1)
        if segments[0][:1] == b">" and ended_line:  # a record starts the block
            segments[0], starts[0] = segments[0][1:], True
            line -= 1  # its newline was counted with the previous block
        ended_line = block.endswith(b"\n")
        for new_record, segment in zip(starts, segments):
            if new_record:
                if header is not None:  # the previous record has a header and no letters
                    yield _header_done(path, start, header)
                line += 1  # the newline cut off by the split
                start, header = RecordStart("", line), []
            if header is not None:
                end = segment.find(b"\n")
                header.append(segment if end < 0 else segment[:end])
                if sum(map(len, header)) > MAX_HEADER_BYTES:
                    raise InputError(f"{where(path, line=start.line)}: header line longer than 1 MiB")
                if end < 0:
                    continue
                yield _header_done(path, start, header)
                header, segment, line = None, segment[end + 1:], line + 1
            if segment:
                yield _fasta_letters(path, start.id, line, segment, nucleotides)
                line += segment.count(b"\n")
    if header is not None:
        yield _header_done(path, start, header)


def _header_done(path: Path, start: RecordStart, header: list[bytes]) -> RecordStart:
    start.id = _record_id(path, b">" + b"".join(header), start.line)
    return start


def _fasta_letters(path: Path, rid: str, line: int, body: bytes, nucleotides: bool = True) -> bytes:
    """The letters of a piece of sequence lines starting at `line`, checked."""
    letters = body.translate(None, _STRIPPED_LINES)
    if letters.translate(None, NUCLEOTIDE_LETTERS) if nucleotides else b"\x00" in letters or not letters.isascii():
        # Slow path, only for bad input: find the line to name it.
        for offset, text in enumerate(body.split(b"\n")):
            if b"\x00" in text or not text.isascii():
                raise InputError(f"{where(path, rid, line + offset)}: binary data in a sequence line")
            if nucleotides:
                _check_letters(path, rid, line + offset, text.translate(None, _STRIPPED))
    return letters


def _fastq_pieces(path: Path, lines: Iterator[tuple[int, bytes]],
                  nucleotides: bool = True) -> Iterator[RecordStart | bytes]:
    for record in _fastq_records(path, lines, nucleotides):
        yield RecordStart(record.id, record.line)
        yield record.seq.encode("ascii")


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
