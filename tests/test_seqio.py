"""Reading FASTA: every line end, block boundary, UTF-8 header and BOM reads the same; control
characters in IDs and over-long header lines are refused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import ROOT, child_env
from vnp.support.errors import InputError


def records_of(tmp_path: Path, data: bytes, name: str = "in.fa") -> list[tuple[str, str]]:
    from vnp.seq.seqio import iter_records

    path = tmp_path / name
    path.write_bytes(data)
    return [(r.id, r.seq) for r in iter_records(path)]


@pytest.mark.parametrize("newline", [b"\r", b"\r\n", b"\n"])
def test_every_line_end_reads_the_same(tmp_path, newline):
    fasta = b">c1 first\nACGT\nAC\n>c2\nGGTT\n".replace(b"\n", newline)
    assert records_of(tmp_path, fasta) == [("c1", "ACGTAC"), ("c2", "GGTT")]
    fastq = b"@r1\nACGT\n+\nIIII\n@r2\nGG\n+\nII\n".replace(b"\n", newline)
    assert records_of(tmp_path, fastq, "in.fq") == [("r1", "ACGT"), ("r2", "GG")]


def test_a_cr_lf_split_between_two_blocks_is_one_line_end(tmp_path, monkeypatch):
    from vnp.seq import seqio

    original = seqio._blocks
    monkeypatch.setattr(seqio, "_blocks", lambda path: original(path, size=5))  # ">c1\r" | "\nACG" ...
    fastq = b"@r1\r\nACGT\r\n+\r\nIIII\r\n@r2\r\nGG\r\n+\r\nII\r\n"
    assert records_of(tmp_path, fastq, "in.fq") == [("r1", "ACGT"), ("r2", "GG")]


def test_utf8_headers_are_accepted_anywhere_and_a_bom_is_skipped(tmp_path):
    early = ">α1 día\nACGT\n>s2\nGG\n".encode()
    late = (">s0\n" + "A" * 5000 + "\n>α1 día\nACGT\n").encode()
    assert records_of(tmp_path, b"\xef\xbb\xbf" + early) == [("α1", "ACGT"), ("s2", "GG")]
    assert records_of(tmp_path, late)[1] == ("α1", "ACGT")
    with pytest.raises(InputError, match="line 1: binary data, not a FASTA/FASTQ file"):
        records_of(tmp_path, b">s\xff\xfe1\nACGT\n")
    with pytest.raises(InputError, match=r"line 3: binary data in a header \(not UTF-8 at column 3\)"):
        records_of(tmp_path, b">s0\n" + b"A" * 5000 + b"\n>s\xff1\nACGT\n")


@pytest.mark.parametrize("rid", ["evil\x1b[31mred", "bell\x07", "csi\u009b31m", "zw\u200bsp"])
def test_control_characters_in_an_id_are_refused(tmp_path, rid):
    with pytest.raises(InputError, match=r"line 1: record ID contains the control character U\+"):
        records_of(tmp_path, f">{rid}\nACGT\n".encode())


@pytest.mark.slow
def test_cr_only_fasta_and_utf8_ids_give_the_right_tables(tiny_pack, tmp_path):
    fasta = tmp_path / "mac.fa"
    fasta.write_bytes(b"\xef\xbb\xbf>c\xc3\xa91\r" + b"ATGGCCAAAGGC" * 20 + b"\r>c2\r" + b"ACGT" * 40 + b"\r")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "vnp.predict", str(fasta), "-o", str(out), f"pack={tiny_pack}",
                           "progress=false", "threads=1", "save_embeddings=true"],
                          env={**child_env(), "LC_ALL": "C", "LANG": "C"},
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    contigs = (out / "contigs.tsv").read_text(encoding="utf-8").splitlines()
    rows = [dict(zip(contigs[0].split("\t"), line.split("\t"))) for line in contigs[1:]]
    assert [(row["sequence_id"], row["length"]) for row in rows] == [("cé1", "240"), ("c2", "160")]
    saved = [str(i) for part in sorted((out / "embeddings").glob("*.npz")) for i in np.load(part)["ids"]]
    assert "cé1_chunk_1F1" in saved and "c2_chunk_1F1" in saved, saved  # the frame IDs of saved embeddings too


def random_fasta(rng) -> tuple[bytes, list[tuple[str, str]]]:
    """A FASTA with wrapped, empty and blank-line-separated records; its records as written."""
    records, lines = [], []
    for i in range(rng.randrange(1, 8)):
        seq = "".join(rng.choice("ACGTN") for _ in range(rng.randrange(0, 60)))
        records.append((f"r{i}", seq))
        lines.append(f">r{i} some description")
        width = rng.randrange(1, 20)
        lines += [seq[k:k + width] for k in range(0, len(seq), width)]
        lines += [""] * rng.randrange(0, 2)
    return ("\n".join(lines) + "\n").encode(), records


def test_records_read_the_same_whatever_the_block_boundaries(tmp_path, monkeypatch):
    import random

    from vnp.seq import seqio

    original = seqio._blocks
    rng = random.Random(3)
    for _ in range(150):
        data, expected = random_fasta(rng)
        size = rng.randrange(1, 30)
        monkeypatch.setattr(seqio, "_blocks", lambda path, size=size: original(path, size=size))
        assert records_of(tmp_path, data) == expected
        line = rng.randrange(len(data.split(b"\n")) - 1)
        lines = data.split(b"\n")
        if not lines[line].startswith(b">"):  # a bad letter on a sequence line names that line
            lines[line] += b"!"
            with pytest.raises(InputError, match=rf"\(line {line + 1}\): invalid character '!'"):
                records_of(tmp_path, b"\n".join(lines))


def test_a_header_line_of_more_than_1_mib_is_refused(tmp_path):
    with pytest.raises(InputError, match="line 1: header line longer than 1 MiB"):
        records_of(tmp_path, b">" + b"x" * (2 << 20) + b"\nACGT\n")


@pytest.mark.parametrize("size", [1, 3, 1 << 22])
@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_a_file_without_a_final_line_end_keeps_its_last_record(tmp_path, monkeypatch, size, newline):
    from vnp.seq import seqio

    original = seqio._blocks
    monkeypatch.setattr(seqio, "_blocks", lambda path: original(path, size=size))
    fastq = b"@r1\nACGT\n+\nIIII\n@r2\nGGA\n+\nIII".replace(b"\n", newline)
    assert records_of(tmp_path, fastq, "in.fq") == [("r1", "ACGT"), ("r2", "GGA")]
    fasta = b">c1\nACGT\n>c2\nGG\nTA".replace(b"\n", newline)
    assert records_of(tmp_path, fasta) == [("c1", "ACGT"), ("c2", "GGTA")]


def test_lower_case_letters_and_n_are_read_as_written(tmp_path):
    """Soft-masked sequences (lower case, `n` for unknown bases) are valid, in every format."""
    letters = "acgtunnNryswkmbdhv"
    assert records_of(tmp_path, f">s1\n{letters}\n>s2\nnnnn\n".encode()) == [("s1", letters), ("s2", "nnnn")]
    fastq = f"@r1\n{letters}\n+\n{'I' * len(letters)}\n@r2\nn\n+\nI\n".encode()
    assert records_of(tmp_path, fastq, "in.fq") == [("r1", letters), ("r2", "n")]
    with pytest.raises(InputError, match=r"\(line 2\): invalid character 'x' at column 3"):
        records_of(tmp_path, b">s1\nacxgt\n")


def test_a_nul_byte_in_a_sequence_line_is_binary_data_and_a_bad_first_letter_is_named(tmp_path):
    with pytest.raises(InputError, match=r"\(line 4\): binary data in a sequence line$"):
        records_of(tmp_path, b">s0\n" + b"A" * 5000 + b"\n>s1\nAC\x00GT\n")  # past the first check
    with pytest.raises(InputError, match=r"line 2: not a FASTA/FASTQ file \(expected '>' or '@', found 'x'\)$"):
        records_of(tmp_path, b"\nxy>s1\nACGT\n")


@pytest.mark.parametrize("quality", ["III", "IIIII"])
def test_a_fastq_quality_shorter_or_longer_than_its_sequence_is_refused(tmp_path, quality):
    with pytest.raises(InputError, match=rf"in.fq: record 'r1' \(line 4\): quality length {len(quality)} differs "
                                         r"from sequence length 4"):
        records_of(tmp_path, f"@r1\nACGT\n+\n{quality}\n".encode(), "in.fq")


def test_a_fasta_record_has_width_letters_a_line():
    from vnp.seq.seqio import fasta_record

    letters = "ACGT" * 38  # 152 letters: two full lines of 60 and one of 32
    assert fasta_record("s1", letters) == f">s1\n{letters[:60]}\n{letters[60:120]}\n{letters[120:]}\n"
    assert fasta_record("s2", letters[:7], width=3) == ">s2\nACG\nTAC\nG\n"
    assert fasta_record("empty", "") == ">empty\n"


def test_a_letter_that_cannot_be_printed_is_named_by_its_byte(tmp_path):
    """A control character in an error message is written as its byte value, never raw or quoted."""
    with pytest.raises(InputError, match=r"\(line 2\): invalid character byte 0x01 at column 3"):
        records_of(tmp_path, b">s1\nAC\x01GT\n")
    with pytest.raises(InputError, match=r"line 1: not a FASTA/FASTQ file \(expected '>' or '@', found byte 0x01\)$"):
        records_of(tmp_path, b"\x01s1\nACGT\n")
