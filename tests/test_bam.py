"""Unaligned BAM and CRAM input (read through pysam by the one sequence reader, vnp.seq.seqio)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

pysam = pytest.importorskip("pysam")

from tests.helpers import one_error_line  # noqa: E402
from vnp.support.errors import InputError  # noqa: E402
from vnp.run.plan import pack_inputs  # noqa: E402
from vnp.seq.seqio import iter_records  # noqa: E402
from vnp.seq.frames import reverse_complement  # noqa: E402
from vnp.predict import main as predict_main  # noqa: E402

UNMAPPED, PAIRED, MATE_UNMAPPED, REVERSE = 0x4, 0x1, 0x8, 0x10
READ1, READ2, SECONDARY = 0x40, 0x80, 0x100
PAIR1, PAIR2 = PAIRED | UNMAPPED | MATE_UNMAPPED | READ1, PAIRED | UNMAPPED | MATE_UNMAPPED | READ2
HEADER = {"HD": {"VN": "1.6", "SO": "unsorted"}, "RG": [{"ID": "rg1", "SM": "sample"}]}


def write_reads(path: Path, reads: list[tuple[str, int, str]], mode: str = "wb") -> Path:
    """An unaligned BAM (`wb`) or CRAM (`wc`) of (name, flag, stored sequence) records, as pysam
    writes them."""
    with pysam.AlignmentFile(str(path), mode, header=HEADER) as out:
        for name, flag, seq in reads:
            read = pysam.AlignedSegment(out.header)
            read.query_name, read.flag, read.query_sequence = name, flag, seq
            read.query_qualities = pysam.qualitystring_to_array("I" * len(seq))
            read.set_tag("RG", "rg1")
            out.write(read)
    return path


PAIRS = [("frag1", PAIR1, "ATGGCCAAAGGCTTTAAA"), ("frag1", PAIR2, "TTTAAAGCCTTTGGCCAT"),
         ("frag2", PAIR1, "ACGTACGTAC"), ("frag2", PAIR2, "GGGCCCAAAT"),
         ("single", UNMAPPED, "ACGTNACGTRYACGT")]


@pytest.mark.parametrize("mode", ["wb", "wc"])
def test_pairs_get_unique_ids_from_the_read1_read2_flags(tmp_path, mode):
    path = write_reads(tmp_path / ("reads.bam" if mode == "wb" else "reads.cram"), PAIRS, mode)
    records = [(r.id, r.seq, r.line) for r in iter_records(path)]
    assert records == [("frag1/1", PAIRS[0][2], None), ("frag1/2", PAIRS[1][2], None),
                       ("frag2/1", PAIRS[2][2], None), ("frag2/2", PAIRS[3][2], None),
                       ("single", PAIRS[4][2], None)]


def test_reads_come_as_sequenced_and_secondary_records_are_skipped(tmp_path):
    stored = "ATGGCCAAAGGCTTTAAC"
    path = write_reads(tmp_path / "r.bam", [("rev", UNMAPPED | REVERSE, stored),
                                            ("rev", UNMAPPED | SECONDARY, "ACGT"),
                                            ("empty", UNMAPPED, "")])
    assert [(r.id, r.seq) for r in iter_records(path)] == [("rev", reverse_complement(stored)), ("empty", "")]


@pytest.mark.parametrize("reads, problem", [
    ([("a", UNMAPPED, "ACGT"), ("a", UNMAPPED, "ACGA")], "record 'a': duplicate record ID"),
    ([("a", UNMAPPED, "AC=T")], "record 'a': invalid character '=' at column 3"),
])
def test_bad_reads_are_named(tmp_path, reads, problem):
    path = write_reads(tmp_path / "bad.bam", reads)
    with pytest.raises(InputError, match=f"^{path}: {problem}"):
        list(iter_records(path))


BGZF_EOF = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")  # SAM spec 4.1.2


@pytest.mark.parametrize("ending, problem", [
    (b"", r"truncated or corrupt BAM data \(no BGZF EOF marker; file may be truncated\)"),
    (BGZF_EOF, r"truncated or corrupt BAM data after \d+ reads$"),  # cut inside a block, EOF block kept
], ids=["cut", "cut-eof-kept"])
def test_truncated_bam_is_one_line_exit_2_and_nothing_packed(tmp_path, ending, problem, capsys):
    reads = [(f"r{i}", UNMAPPED, "ACGT" * 50) for i in range(3000)]
    whole = write_reads(tmp_path / "whole.bam", reads).read_bytes()
    cut = tmp_path / "cut.bam"
    cut.write_bytes(whole[: len(whole) // 2] + ending)
    with pytest.raises(InputError, match=f"^{cut}: {problem}"):
        pack_inputs([cut], tmp_path / "work")
    assert not any((tmp_path / "work").iterdir())  # no packed file, no temporary left
    capsys.readouterr()
    assert predict_main([str(cut), "-o", str(tmp_path / "out"), "pack=tiny", "progress=false", "threads=1"]) == 2
    assert one_error_line(capsys.readouterr().err).startswith(f"vnp: error: {cut}: truncated or corrupt BAM")


@pytest.mark.parametrize("stale", [0, 2, 5])
def test_a_cut_bam_says_the_same_whatever_errno_htslib_left(tmp_path, stale):
    """htslib reports a block cut short as a failed close carrying whatever errno was last set (0,
    or ENOENT from an earlier lookup): that errno says nothing about the file, so it is not shown."""
    import ctypes

    libc = ctypes.CDLL(None)
    libc.__errno_location.restype = ctypes.POINTER(ctypes.c_int)
    reads = [(f"r{i}", UNMAPPED, "ACGT" * 50) for i in range(3000)]
    whole = write_reads(tmp_path / "whole.bam", reads).read_bytes()
    cut = tmp_path / "cut.bam"
    cut.write_bytes(whole[: len(whole) // 2] + BGZF_EOF)
    records = iter_records(cut)
    next(records)
    libc.__errno_location()[0] = stale
    with pytest.raises(InputError, match=rf"^{cut}: truncated or corrupt BAM data after \d+ reads$"):
        list(records)


def test_predict_on_a_bam_equals_predict_on_the_same_reads_as_fasta(tmp_path):
    from vnp.demo import coding_like

    seqs = [coding_like(random.Random(i), 420 + 37 * i) for i in range(4)]
    reads = [("p", PAIR1, seqs[0]), ("p", PAIR2, seqs[1]), ("q", UNMAPPED, seqs[2]), ("s", UNMAPPED, seqs[3])]
    bam = write_reads(tmp_path / "reads.bam", reads)
    fasta = tmp_path / "reads.fa"
    fasta.write_text(">p/1\n{}\n>p/2\n{}\n>q\n{}\n>s\n{}\n".format(*seqs))
    common = ["pack=tiny", "progress=false", "threads=1", "chunk_length=150"]
    outs = {}
    for path in (bam, fasta):
        out = tmp_path / f"out_{path.suffix[1:]}"
        assert predict_main([str(path), "-o", str(out), *common]) == 0  # in this process: the reader is the subject
        outs[path.suffix] = out
    for name in ("prediction_results.txt", "prediction_results_highestscore.csv", "chunks.tsv"):
        assert (outs[".bam"] / name).read_bytes() == (outs[".fa"] / name).read_bytes(), name
    bam_contigs = (outs[".bam"] / "contigs.tsv").read_text().replace("reads.bam", "reads.fa")
    assert bam_contigs == (outs[".fa"] / "contigs.tsv").read_text()
