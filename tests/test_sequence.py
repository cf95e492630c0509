"""The sequence stage: reading, chunking, six-frame translation and `vnp translate`."""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import lzma
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests import baseline_translate as baseline
from vnp.seq.chunking import chunk_bounds, chunk_id, chunk_spans
from vnp.seq.filters import KEPT, TOO_MANY_N, TOO_SHORT, filter_codes, reason
from vnp.run.plan import load_plan, pack_inputs, read_chunks
from vnp.seq.seqio import Record, input_stem, iter_records
from vnp.seq.frames import Chunk, batched_chunks, chunks_of, reverse_complement, translate_chunks
from vnp.translate import main as translate_main


def spans1(n: int, L: int) -> list[tuple[int, int]]:
    """1-based inclusive chunk coordinates."""
    return [(s.start + 1, s.end) for s in chunk_spans(n, L)]


def kept(seq: str, rid: str = "c") -> list[tuple[str, str, str]]:
    (frames,) = translate_chunks([Chunk(0, rid, 1, 1, len(seq), seq)])
    return [(f.id, f.nucleotide, f.protein) for f in frames]


# --- filters --------------------------------------------------------------------------------

FILTERS = {"min_length": 100, "max_n_fraction": 0.5}


def test_a_sequence_of_exactly_min_length_is_kept():
    codes = filter_codes(np.asarray([99, 100, 101, 0]), np.zeros(4, np.int64), FILTERS)
    assert codes.tolist() == [TOO_SHORT, KEPT, KEPT, TOO_SHORT]
    assert reason(TOO_SHORT, 99, 0, FILTERS) == "length 99 < filter.min_length 100"
    assert reason(KEPT, 100, 0, FILTERS) == ""


def test_an_n_fraction_of_exactly_max_n_fraction_is_kept():
    lengths, n_bases = np.asarray([200, 200, 200, 50]), np.asarray([99, 100, 101, 50])
    assert filter_codes(lengths, n_bases, FILTERS).tolist() == [KEPT, KEPT, TOO_MANY_N, TOO_SHORT]  # length first
    assert reason(TOO_MANY_N, 200, 101, FILTERS) == "N fraction 0.505 > filter.max_n_fraction 0.5"
    assert filter_codes(np.asarray([0]), np.asarray([0]), {"min_length": 0, "max_n_fraction": 0.0}).tolist() == [KEPT]


def test_a_one_base_n_record_is_too_many_n_and_a_missing_key_filters_nothing():
    one_n = filter_codes(np.asarray([1, 0]), np.asarray([1, 0]), {"min_length": 0, "max_n_fraction": 0.5})
    assert one_n.tolist() == [TOO_MANY_N, KEPT]
    assert reason(TOO_MANY_N, 1, 1, FILTERS) == "N fraction 1.000 > filter.max_n_fraction 0.5"
    lengths, n_bases = np.asarray([0, 50, 200]), np.asarray([0, 50, 10])
    assert filter_codes(lengths, n_bases, {"min_length": 100}).tolist() == [TOO_SHORT, TOO_SHORT, KEPT]
    assert filter_codes(lengths, n_bases, {"max_n_fraction": 0.5}).tolist() == [KEPT, TOO_MANY_N, KEPT]


@pytest.mark.parametrize("filters", [None, {}, {"min_length": 0, "max_n_fraction": 1.0}])
def test_no_filters_keep_everything(filters):
    codes = filter_codes(np.asarray([0, 1, 500]), np.asarray([0, 1, 500]), filters)
    assert codes.tolist() == [KEPT] * 3 and codes.dtype == np.int8


# --- chunking -------------------------------------------------------------------------------

@pytest.mark.parametrize("n, L, expected", [
    (1, 500, [(1, 1)]),                                   # shorter than L: keeps what there is
    (499, 500, [(1, 499)]),
    (500, 500, [(1, 500)]),                               # n = L
    (501, 500, [(1, 500), (251, 501)]),                   # n = L + 1: shift int(499/2)+1 = 250
    (700, 500, [(1, 500), (350, 700)]),                   # shift 151, last chunk 351 bp (quirk)
    (1000, 500, [(1, 500), (501, 1000)]),                 # L divides n: no overlap
    (1001, 500, [(1, 500), (334, 833), (667, 1001)]),     # shifts 167, 167: last chunk 335 bp
    (1500, 500, [(1, 500), (501, 1000), (1001, 1500)]),
    (10, 3, [(1, 3), (3, 5), (5, 7), (8, 10)]),           # surplus 2 over 4 chunks: shifts 1, 1, 0
    (650, 300, [(1, 300), (217, 516), (433, 650)]),       # L = 300: shifts int(250/3)+1 = 84, 84
])
def test_chunk_coordinates_exact(n, L, expected):
    assert spans1(n, L) == expected


def chunk_shifts(length: int, chunk_length: int) -> list[int]:
    """The oracle: the backward shift after each chunk as the original loops them out
    (`final_low_up_numbers`), surplus / chunks rounded down, one more for the first few gaps."""
    n_chunks = -(-length // chunk_length)
    surplus = n_chunks * chunk_length - length
    lower = int(surplus / n_chunks)
    n_upper = surplus - lower * (n_chunks - 1)
    shifts = [lower + 1] * n_upper + [lower] * (n_chunks - 1 - n_upper) + [0]
    return shifts[:n_chunks]


def test_many_sequences_chunked_at_once_equal_each_alone():
    """chunk_bounds (the packed plan's, closed form) = chunk_spans of each sequence = the original's
    shifts (chunk_shifts) added up; a sequence given 0 chunks is left out."""
    rng = random.Random(5)
    for chunk_length in (3, 7, 300, 500):
        lengths = [rng.choice([0, 1, chunk_length - 1, chunk_length, chunk_length + 1, rng.randrange(1, 5000)])
                   for _ in range(40)]
        starts, ends = chunk_bounds(np.asarray(lengths), chunk_length)
        spans = [(s.start, s.end) for n in lengths for s in chunk_spans(n, chunk_length)]
        assert list(zip(starts.tolist(), ends.tolist())) == spans
        for n in lengths:
            shifts = chunk_shifts(n, chunk_length) if n else []
            by_shifts = [k * chunk_length - sum(shifts[:k]) for k in range(len(shifts))]
            assert by_shifts == [s.start for s in chunk_spans(n, chunk_length)], (n, chunk_length)
        counts = [0 if i % 3 == 0 else -(-n // chunk_length) for i, n in enumerate(lengths)]
        starts, ends = chunk_bounds(np.asarray(lengths), chunk_length, np.asarray(counts))
        kept = [(s.start, s.end) for i, n in enumerate(lengths) if i % 3 for s in chunk_spans(n, chunk_length)]
        assert list(zip(starts.tolist(), ends.tolist())) == kept


def test_empty_sequence_has_no_chunk():
    assert chunk_spans(0, 500) == []


def test_chunk_plan_properties():
    rng = random.Random(7)
    for _ in range(3000):
        L = rng.choice([1, 2, 3, 7, 50, 300, 500])
        n = rng.randint(1, 6 * L + 5)
        spans = chunk_spans(n, L)
        assert len(spans) == -(-n // L)
        covered = [False] * n
        for s in spans:
            assert 0 <= s.start < s.end <= n
            covered[s.start:s.end] = [True] * (s.end - s.start)
        assert all(covered), (n, L)
        # every chunk but the last is exactly L long; a sequence shorter than L is one chunk
        assert all(s.end - s.start == L for s in spans[:-1])
        assert spans[-1].end == n
        if n < L:
            assert (spans[0].start, spans[0].end) == (0, n)
        assert [(s.start, s.end) for s in spans] == baseline.spans(n, L)


# --- translation ----------------------------------------------------------------------------

def test_chunks_come_in_batches_of_about_max_bases_numbered_across_batches():
    records = [Record(f"s{i}", "ACGT" * (25 * i + 10), 1) for i in range(7)]
    alone = [chunk for record in records for chunk in chunks_of(record, 100)]
    assert [c.index for c in chunks_of(records[3], 100)] == list(range(len(list(chunks_of(records[3], 100)))))
    batches = list(batched_chunks(records, 100, max_bases=300))
    assert [c for batch in batches for c in batch] == [dataclasses.replace(c, index=i) for i, c in enumerate(alone)]
    assert [len(batch) for batch in batches][:-1] == [3] * (len(batches) - 1) and 1 <= len(batches[-1]) <= 3


def test_six_frames_known_translation():
    # ATGGCCAAA: F1 MAK, F2 TGG CCA = WP, F3 GGC CAA = GQ; reverse complement TTTGGCCAT:
    # R1 TTT GGC CAT = FGH, R2 TTG GCC = LA, R3 TGG CCA = WP. The nucleotide is one base longer
    # than the coding region where the chunk allows it.
    assert kept("ATGGCCAAA") == [
        ("c_chunk_1F1", "ATGGCCAAA", "MAK"),
        ("c_chunk_1F2", "TGGCCAA", "WP"),
        ("c_chunk_1F3", "GGCCAAA", "GQ"),
        ("c_chunk_1R1", "TTTGGCCAT", "FGH"),
        ("c_chunk_1R2", "TTGGCCA", "LA"),
        ("c_chunk_1R3", "TGGCCAT", "WP"),
    ]


def test_frames_with_stop_are_dropped():
    # F1: ATG TAA -> M*; F2: TGT AAC -> CN; F3: GTA -> V. Reverse GTTACAT: R1 GTT ACA -> VT,
    # R2 TTA CAT -> LH, R3 TAC -> Y.
    assert [f[0] for f in kept("ATGTAAC")] == ["c_chunk_1F2", "c_chunk_1F3", "c_chunk_1R1", "c_chunk_1R2", "c_chunk_1R3"]
    assert kept("ATGTAAC")[0] == ("c_chunk_1F2", "TGTAAC", "CN")


def test_ambiguous_codons_are_dropped_silently():
    # F1 ATG NNN AAA -> M K; the stored slice still follows len(protein): seq[0 : 1 + 6].
    frames = dict((i, (n, p)) for i, n, p in kept("ATGNNNAAA"))
    assert frames["c_chunk_1F1"] == ("ATGNNNA", "MK")


def test_reverse_complement_keeps_iupac_codes():
    assert reverse_complement("ACGTRYN") == "NYRACGT"
    assert reverse_complement("acgt") == "acgt"


def test_lower_case_is_translated_as_upper_case():
    assert kept("atggccaaa") == kept("ATGGCCAAA")


@pytest.mark.parametrize("seq", ["", "A", "AT", "NNNNNN", "TAACTAACTAACTTAGTTAGTTAG"])
def test_sequences_without_frames(seq):
    # the last: TAAC repeats (period 4, so TAA falls in every forward frame), then TTAG repeats,
    # whose reverse complement CTAA puts TAA in every reverse frame
    assert kept(seq) == []


def test_stops_in_one_frame_keep_the_other_five():
    # TAATAGTGA: F1 TAA TAG TGA (stops) is dropped; F2 AAT AGT = NS, F3 ATA GTG = IV; reverse
    # complement TCACTATTA: R1 TCA CTA TTA = SLL, R2 CAC TAT = HY, R3 ACT ATT = TI.
    assert kept("TAATAGTGA") == [
        ("c_chunk_1F2", "AATAGTG", "NS"),
        ("c_chunk_1F3", "ATAGTGA", "IV"),
        ("c_chunk_1R1", "TCACTATTA", "SLL"),
        ("c_chunk_1R2", "CACTATT", "HY"),
        ("c_chunk_1R3", "ACTATTA", "TI"),
    ]


def test_matches_per_codon_baseline_on_random_chunks():
    rng = random.Random(11)
    alphabet = "ACGT" * 20 + "acgtNRY"
    records = [(f"s{i}", "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 130)))) for i in range(400)]
    expected = list(baseline.translate_records(records, 37))
    chunks = []
    for rid, seq in records:
        for span in chunk_spans(len(seq), 37):
            chunks.append(Chunk(len(chunks), rid, span.number, span.start + 1, span.end, seq[span.start:span.end]))
    got = translate_chunks(chunks)
    assert [c.id for c in chunks] == [e[0] for e in expected]
    assert [c.seq for c in chunks] == [e[1] for e in expected]
    assert [[(f.id, f.nucleotide, f.protein) for f in fr] for fr in got] == [e[2] for e in expected]
    assert sum(len(fr) for fr in got) > 100  # the comparison covered many kept frames


# --- reading ----------------------------------------------------------------------------------

def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_record_ids_and_multiline_fasta(tmp_path):
    path = write(tmp_path / "a.fa", ">s1 some description\nACGT\nAC GT\r\n\n>s2\nNNNN\n")
    records = list(iter_records(path))
    assert [(r.id, r.seq, r.line) for r in records] == [("s1", "ACGTACGT", 1), ("s2", "NNNN", 5)]


@pytest.mark.parametrize("opener, suffix", [(gzip.open, ".gz"), (bz2.open, ".bz2"), (lzma.open, ".xz")])
def test_compressed_inputs(tmp_path, opener, suffix):
    text = ">s1\nACGTACGTAA\n>s2\nGGGCCC\n"
    with opener(tmp_path / f"x.fa{suffix}", "wt") as fh:
        fh.write(text)
    plain = list(iter_records(write(tmp_path / "x.fa", text)))
    assert list(iter_records(tmp_path / f"x.fa{suffix}")) == plain


def test_fastq_reads_like_fasta(tmp_path):
    fq = write(tmp_path / "r.fq", "@r1 x\nACGTTGCA\n+\nIIIIIIII\n@r2\nGGG\n+r2\nIII\n")
    assert [(r.id, r.seq) for r in iter_records(fq)] == [("r1", "ACGTTGCA"), ("r2", "GGG")]


@pytest.mark.parametrize("name, stem", [
    ("reads.fastq.gz", "reads"), ("a.fa", "a"), ("genome.fasta.xz", "genome"), ("x.fna.bz2", "x"),
    ("plain", "plain"), ("s.v1.fa", "s.v1"), (".fa", ".fa"), (".fastq.gz", ".fastq"),
])
def test_input_stem(name, stem):
    """A name that is nothing but a suffix keeps it: a stem is never empty."""
    assert input_stem(name) == stem


BAD_INPUTS = {
    "empty.fa": (b"", "empty file"),
    "blank.fa": (b"\n\n  \n", "no records"),
    "junk.fa": (bytes(range(256)) * 4, "binary data"),
    "prose.fa": (b"hello world\n", "not a FASTA/FASTQ file"),
    "digit.fa": (b">s1\nACGT\nAC1T\n", "record 's1' (line 3): invalid character '1'"),
    "star.fa": (b">s1\nACGT*\n", "invalid character '*'"),
    "dash.fa": (b">s1\nAC-GT\n", "invalid character '-'"),
    "protein.fa": (b">p1\nMEFILPQ\n", "invalid character 'E'"),
    "dup.fa": (b">s1\nACGT\n>s2\nAC\n>s1\nGG\n", "record 's1' (line 5): duplicate record ID"),
    "noid.fa": (b">\nACGT\n", "header has no record ID"),
    "qual.fq": (b"@r1\nACGT\n+\nIII\n", "record 'r1' (line 4): quality length 3 differs from sequence length 4"),
    "cut.fq": (b"@r1\nACGT\n", "file ends before"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_is_one_clear_error(tmp_path, name, capsys):
    data, message = BAD_INPUTS[name]
    path = tmp_path / name
    path.write_bytes(data)
    out = tmp_path / "out"
    assert translate_main([str(path), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(path) in err and message in err, err
    assert list(out.iterdir()) == []  # nothing written for that input


def test_truncated_gzip(tmp_path, capsys):
    blob = gzip.compress(b">s1\n" + b"ACGT" * 50000 + b"\n")
    path = tmp_path / "cut.fa.gz"
    path.write_bytes(blob[: len(blob) // 2])
    assert translate_main([str(path), "-o", str(tmp_path / "out")]) == 2
    assert "truncated or corrupt gzip" in capsys.readouterr().err


def test_missing_file_and_directory(tmp_path, capsys):
    assert translate_main([str(tmp_path / "nope.fa"), "-o", str(tmp_path / "o")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert translate_main([str(tmp_path), "-o", str(tmp_path / "o")]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_bad_input_leaves_earlier_outputs_intact(tmp_path):
    good = write(tmp_path / "good.fa", ">s1\nATGGCCAAA\n")
    out = tmp_path / "out"
    assert translate_main([str(good), "-o", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    bad = write(tmp_path / "bad.fa", ">s1\nAT9\n")
    assert translate_main([str(bad), "-o", str(out)]) == 2
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_cli_error_has_no_traceback(tmp_path):
    bad = write(tmp_path / "bad.fa", ">s1\nACGT\n>s1\nAC\n")
    proc = subprocess.run([sys.executable, "-m", "vnp.translate", str(bad), "-o", str(tmp_path / "o")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_same_input_twice_is_refused(tmp_path, capsys):
    good = write(tmp_path / "good.fa", ">s1\nACGT\n")
    assert translate_main([str(good), str(good), "-o", str(tmp_path / "o")]) == 2
    assert "given twice" in capsys.readouterr().err


# --- parity with the original -----------------------------------------------------------------

@pytest.mark.parametrize("stem", ["test_with_orfs", "test_fixed_500bp", "test_sequences_small"])
def test_outputs_identical_to_original(vanilla, tmp_path, stem, capsys):
    assert translate_main([str(vanilla / f"{stem}.fa"), "-L", "500", "-o", str(tmp_path)]) == 0
    names = [f"{stem}_chunked500.fa", f"{stem}_identified_nucleotide.fa", f"{stem}_identified_protein.faa"]
    for name in names:
        reference = vanilla / name
        if reference.exists():
            assert (tmp_path / name).read_bytes() == reference.read_bytes(), name
        else:  # the original wrote no frames for this input
            assert (tmp_path / name).read_bytes() == b""
    summary = capsys.readouterr().err
    assert "chunks" in summary and "kept frames" in summary


def test_summary_counts(tmp_path, capsys):
    path = write(tmp_path / "m.fa", ">a\nATGGCCAAA\n>b\nAT\n>c\n" + "TAA" * 400 + "\n")
    assert translate_main([str(path), "-L", "500", "-o", str(tmp_path / "o")]) == 0
    # a: 1 chunk, 6 frames. b: 1 chunk, no frame. c: 1200 bp -> 3 chunks starting in phase
    # (0, 399, 798); forward TAA|AAT|ATA: F1 stops, F2/F3 kept; reverse all kept: 5 frames each.
    err = capsys.readouterr().err
    assert "3 sequences, 5 chunks, 21 kept frames, 1 chunks with no kept frame" in err


# --- frame IDs: the original's format, through both paths (vnp translate, and predict's chunk plan) ---

def plan_frame_ids(fasta: Path, work: Path, chunk_length: int = 500) -> list[str]:
    """Frame IDs as `vnp predict` derives them: packed inputs, the chunk plan, then translation."""
    pack_inputs([fasta], work)
    plan = load_plan(work, chunk_length)
    chunks = read_chunks(plan, work / "sequences.bin", 0, plan.n_chunks)
    assert [c.index for c in chunks] == list(range(plan.n_chunks))
    return [f.id for frames in translate_chunks(chunks) for f in frames]


def test_frame_id_format_is_the_originals(tmp_path):
    fasta = write(tmp_path / "x.fa", ">seq1 a description\n" + "ATGGCCAAA" * 80 + "\n>s.2|x\nATGGCCAAA\n")
    expected = [f"seq1_chunk_{k}{frame}" for k in (1, 2) for frame in ("F1", "F2", "F3", "R1", "R2", "R3")]
    expected += ["s.2|x_chunk_1F1", "s.2|x_chunk_1F2", "s.2|x_chunk_1F3", "s.2|x_chunk_1R1", "s.2|x_chunk_1R2",
                 "s.2|x_chunk_1R3"]
    assert chunk_id("seq1", 2) == "seq1_chunk_2"
    assert plan_frame_ids(fasta, tmp_path / "work") == expected
    assert translate_main([str(fasta), "-o", str(tmp_path / "out")]) == 0
    headers = (tmp_path / "out" / "x_identified_protein.faa").read_text().splitlines()[::2]
    assert headers == [">" + i for i in expected]


@pytest.mark.parametrize("stem", ["test_with_orfs", "test_fixed_500bp"])
def test_frame_ids_match_the_originals_files(vanilla, tmp_path, stem):
    headers = (vanilla / f"{stem}_identified_protein.faa").read_text().splitlines()[::2]
    frame_ids = plan_frame_ids(vanilla / f"{stem}.fa", tmp_path / "work")
    assert [">" + i for i in frame_ids] == headers
    rows = (vanilla / f"{stem}_outputs" / "prediction_results.txt").read_text().splitlines()[1:]
    assert frame_ids == [row.split("\t")[0] for row in rows]


# --- frame tokens (the engine's cost estimate) -------------------------------------------------

def frame_token_records(rng: random.Random) -> list[tuple[str, str]]:
    """Records of every kind: no T (every frame stop-free), N and lowercase, IUPAC codes, stop-rich,
    shorter than a codon or than a chunk, and long ones."""
    alphabets = ["ACG", "acgN", "ACGT", "ACGTacgtNRY", "CGn", "AACCGGGT"]
    records = []
    for i in range(120):
        alphabet = rng.choice(alphabets)
        n = rng.choice([0, 1, 2, 3, 4, 5, 6, 7, rng.randint(8, 299), rng.randint(300, 1700)])
        records.append((f"r{i}", "".join(rng.choice(alphabet) for _ in range(n))))
    records.append(("long", "ACG" * 1200 + "acgN" * 50))  # one frame of > MAX_RESIDUES residues at 3300
    return records


def translated_tokens(plan, work: Path) -> list[int]:
    """The cost estimate as it was: translate every chunk and count its kept frames' ESM tokens."""
    from vnp.models.esm import MAX_RESIDUES

    chunks = read_chunks(plan, work / "sequences.bin", 0, plan.n_chunks)
    return [sum(min(len(f.protein), MAX_RESIDUES) + 2 for f in kept) for kept in translate_chunks(chunks)]


@pytest.mark.parametrize("L", [300, 500, 3300])
def test_frame_tokens_equal_the_translated_frames_tokens(tmp_path, L):
    """The cost estimate's stop scan (`ChunkPlan.tokens`): equal, chunk for chunk and for any range
    of chunks, to the tokens of the translated frames, filters included."""
    records = frame_token_records(random.Random(L))
    fasta = tmp_path / "x.fa"
    fasta.write_text("".join(f">{rid}\n{seq}\n" for rid, seq in records))
    work = tmp_path / "work"
    pack_inputs([fasta], work)
    for filters in (None, {"min_length": 250, "max_n_fraction": 0.02}):
        plan = load_plan(work, L, filters)
        expected = translated_tokens(plan, work)
        for c0, c1 in [(0, plan.n_chunks), (0, 1), (3, 40), (17, plan.n_chunks), (plan.n_chunks - 2, plan.n_chunks),
                       (5, 5)]:
            assert plan.tokens(work / "sequences.bin", c0, c1).tolist() == expected[c0:c1]
        assert sum(t > 0 for t in expected) > len(expected) // 3  # many chunks keep frames


@pytest.mark.parametrize("L", [7, 300, 500])
def test_frame_residues_are_the_kept_proteins_lengths(L):
    """Frame by frame (F1..R3), the stop scan gives each kept frame's protein length, 0 for a dropped one."""
    from vnp.seq.frames import frame_residues

    seqs = [seq[:L] for _, seq in frame_token_records(random.Random(L)) if seq]
    chunks = [Chunk(i, f"r{i}", 1, 1, len(seq), seq) for i, seq in enumerate(seqs)]
    letters = np.full((len(chunks), L), ord("T"), dtype=np.uint8)  # past each chunk's end: ignored
    for row, chunk in zip(letters, chunks):
        row[:len(chunk.seq)] = np.frombuffer(chunk.seq.encode("ascii"), dtype=np.uint8)
    expected = np.zeros((len(chunks), 6), dtype=np.int64)
    for row, kept in zip(expected, translate_chunks(chunks)):
        for frame in kept:
            row[frame.index] = len(frame.protein)
    assert frame_residues(letters, [len(c.seq) for c in chunks]).tolist() == expected.tolist()
    assert (expected[:, 3:] > 0).sum() > len(chunks) // 3  # many reverse frames kept


@pytest.mark.parametrize("chunk_length", [0, -1])
def test_a_chunk_length_below_one_is_refused(chunk_length):
    with pytest.raises(ValueError, match=f"chunk length must be positive, got {chunk_length}"):
        chunk_bounds(np.asarray([10, 700]), chunk_length)


def test_a_chunk_states_its_1_based_inclusive_span():
    """700 bp at L = 500: chunks 1-500 and 350-700 (the module's example), positions 1-based."""
    seq = "ACGT" * 175
    chunks = list(chunks_of(Record("r", seq, 1), 500, first_index=3))
    assert [(c.index, c.number, c.start, c.end) for c in chunks] == [(3, 1, 1, 500), (4, 2, 350, 700)]
    assert [c.seq for c in chunks] == [seq[:500], seq[349:]]
