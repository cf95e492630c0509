"""Results end to end: a classifier that scores a known property, chimeric contigs, regions in
TSV/BED/GFF3 parsed back, FASTA against the input, filters, summaries, and `vnp call`."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vnp.call import main as call_main
from vnp.results.tables import FILES, RESULT_FILES
from vnp.predict import main as predict_main

ROOT = Path(__file__).resolve().parents[1]
L = 500
# "viral" DNA: G/C codons only; "host" DNA: A/T codons only (TAA left out, so frame F1 has no stop).
# Their tiny-model embeddings lie far apart along the difference of their means.
VIRAL_CODONS = [a + b + c for a in "GC" for b in "GC" for c in "GC"]
HOST_CODONS = [a + b + c for a in "AT" for b in "AT" for c in "AT" if a + b + c != "TAA"]


def dna(rng: random.Random, codons: list[str], n: int) -> str:
    return "".join(rng.choices(codons, k=n // 3 + 1))[:n]


def contigs(rng: random.Random) -> tuple[dict[str, str], dict[str, str]]:
    """Two inputs of contigs made of host (h) and viral (v) stretches, lengths not multiples of L."""
    v, h = (lambda n: dna(rng, VIRAL_CODONS, n)), (lambda n: dna(rng, HOST_CODONS, n))
    first = {"chim_mid": h(1900) + v(2100) + h(1750), "chim_start": v(1600) + h(2300),
             "viral_only": v(1500), "host_only": h(1400), "short_viral": v(420)}
    second = {"chim_two": h(1000) + v(1300) + h(1200) + v(1100) + h(900), "stops": "TAACTAACTAACTTAGTTAGTTAG" * 10,
              "too_short": v(80), "mostly_n": "N" * 700 + v(300)}
    return first, second


EXPECTED = {  # 1-based (start, end) of the viral stretches
    "chim_mid": [(1901, 4000)], "chim_start": [(1, 1600)], "viral_only": [(1, 1500)], "short_viral": [(1, 420)],
    "chim_two": [(1001, 2300), (3501, 4600)],
}


def write_fasta(path: Path, records: dict[str, str]) -> Path:
    lines = lambda seq: "".join(seq[i:i + 70] + "\n" for i in range(0, len(seq), 70))  # noqa: E731
    path.write_text("".join(f">{name} some description\n{lines(seq)}" for name, seq in records.items()))
    return path


def build_property_classifier(pack_dir: Path, out_dir: Path) -> None:
    """A classifier whose virus logit is 0.5 * (w . x - t): w the difference of the mean frame
    embeddings of viral and host chunks under the tiny models, t halfway between the classes."""
    from vnp.models.classifier import MLPClassifier, save_classifier
    from vnp.models.dnabert import load_dnabert
    from vnp.models.esm import load_esm
    from vnp.models.pack import build_tiny_pack
    from vnp.seq.frames import Chunk, translate_chunks

    pack = build_tiny_pack(pack_dir, L, seed=0)
    dnabert, esm = load_dnabert(pack.dnabert), load_esm(pack.esm, layer=pack.esm_layer)
    rng = random.Random(11)

    def embed(codons: list[str]) -> np.ndarray:
        chunks = [Chunk(str(i), "r", 1, 1, L, dna(rng, codons, L)) for i in range(6)]
        frames = [f for kept in translate_chunks(chunks) for f in kept]
        return np.concatenate([dnabert.embed([f.nucleotide for f in frames]),
                               esm.embed([f.protein for f in frames])], axis=1)

    viral, host = embed(VIRAL_CODONS), embed(HOST_CODONS)
    w = viral.mean(0) - host.mean(0)
    t = float((viral @ w).mean() + (host @ w).mean()) / 2
    assert (viral @ w).min() > t > (host @ w).max()  # the property separates the two kinds
    model = MLPClassifier(pack.embedding_dim, 2, 2)
    with torch.no_grad():
        model.hidden_layer.weight.copy_(torch.from_numpy(np.stack([w, -w])))
        model.hidden_layer.bias.copy_(torch.tensor([-t, t]))
        model.bn1.running_mean.zero_()
        model.bn1.running_var.fill_(1.0)
        model.bn1.weight.fill_(1.0)
        model.bn1.bias.zero_()
        model.output_layer.weight.copy_(torch.tensor([[0.0, 0.0], [0.5, -0.5]]))
        model.output_layer.bias.zero_()
    save_classifier(model.eval(), out_dir)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One predict run with filters on two inputs; returns (OUT, sequences by input)."""
    tmp = tmp_path_factory.mktemp("results")
    build_property_classifier(tmp / "pack", tmp / "classifier")
    first, second = contigs(random.Random(5))
    inputs = [write_fasta(tmp / "one.fa", first), write_fasta(tmp / "two.fa", second)]
    out = tmp / "out"
    code = predict_main([*map(str, inputs), "-o", str(out), f"pack={tmp / 'pack'}", f"classifier={tmp / 'classifier'}",
                         "threads=1", "progress=false", "batch.unit_chunks=4", "filter.min_length=100",
                         "filter.max_n_fraction=0.5"])
    assert code == 0
    return out, {"one.fa": first, "two.fa": second}


def table(path: Path) -> list[dict[str, str]]:
    header, *rows = path.read_text().splitlines()
    return [dict(zip(header.split("\t"), row.split("\t"))) for row in rows]


def read_fasta(path: Path, width: int = 60) -> dict[str, str]:
    records, name = {}, None
    for line in path.read_text().splitlines():
        if line.startswith(">"):
            name = line[1:]
            records[name] = ""
        else:
            assert 0 < len(line) <= width
            records[name] += line
    for text in path.read_text().split(">")[1:]:  # every line but a record's last is full
        assert all(len(line) == width for line in text.splitlines()[1:-1])
    return records


def test_regions_found_where_the_viral_stretches_are(run):
    out, _ = run
    regions = table(out / "regions.tsv")
    found: dict[str, list[tuple[int, int]]] = {}
    for row in regions:
        found.setdefault(row["sequence_id"], []).append((int(row["start"]), int(row["end"])))
        assert int(row["length"]) == int(row["end"]) - int(row["start"]) + 1
        assert row["region_id"] == f"{row['sequence_id']}|region_{row['start']}_{row['end']}"
        assert float(row["mean_virus_score"]) <= float(row["max_virus_score"])
    assert sorted(found) == sorted(EXPECTED)
    for name, stretches in EXPECTED.items():
        assert len(found[name]) == len(stretches), name
        for (start, end), (want_start, want_end) in zip(found[name], stretches):
            # chunk scores blur a boundary over at most one chunk
            assert abs(start - want_start) <= L // 2 and abs(end - want_end) <= L // 2, (name, start, end)
    kinds = {row["sequence_id"]: row["kind"] for row in regions}
    assert kinds["viral_only"] == kinds["short_viral"] == "whole" and kinds["chim_mid"] == "partial"
    assert found["viral_only"] == [(1, 1500)] and found["short_viral"] == [(1, 420)]
    assert found["chim_start"][0][0] == 1


def test_contigs_labels_filters_and_summary(run):
    out, sequences = run
    rows = {row["sequence_id"]: row for row in table(out / "contigs.tsv")}
    assert list(rows) == [name for records in sequences.values() for name in records]  # input order
    assert {name: rows[name]["input"] for name in rows} == {n: f for f, rec in sequences.items() for n in rec}
    labels = {name: row["label"] for name, row in rows.items()}
    assert labels == {"chim_mid": "others", "chim_start": "others", "viral_only": "virus", "host_only": "others",
                      "short_viral": "virus", "chim_two": "others", "stops": "no_frames", "too_short": "filtered",
                      "mostly_n": "filtered"}
    assert rows["viral_only"]["confidence"] == "high" and rows["host_only"]["confidence"] == "high"
    assert rows["stops"]["confidence"] == "NA" and rows["too_short"]["confidence"] == "NA"
    assert rows["too_short"]["reason"] == "length 80 < filter.min_length 100"
    assert rows["mostly_n"]["reason"] == "N fraction 0.700 > filter.max_n_fraction 0.5"
    assert rows["too_short"]["chunks"] == "0" and rows["viral_only"]["reason"] == ""
    # filtered sequences were never translated nor embedded
    frames = (out / "prediction_results.txt").read_text()
    assert "too_short_chunk" not in frames and "mostly_n_chunk" not in frames
    record = json.loads((out / "run.json").read_text())
    assert record["counts"]["filtered"] == 2 and record["counts"]["labels"]["filtered"] == 2
    assert record["calls"]["filter"] == {"min_length": 100, "max_n_fraction": 0.5}
    assert record["calls"]["call"]["min_score"] == 0.0 and record["calls"]["written_by"] == "vnp predict"
    summary = table(out / "summary.tsv")
    assert [row["input"] for row in summary] == ["one.fa", "two.fa", "total"]
    one, two, total = summary
    assert (one["sequences"], one["viral_sequences"], one["viral_bp"], one["regions"]) == ("5", "2", "1920", "4")
    assert (two["sequences"], two["no_frames"], two["filtered"], two["regions"]) == ("4", "1", "2", "2")
    bp = sum(len(s) for records in sequences.values() for s in records.values())
    assert int(total["bp"]) == bp and int(total["regions"]) == len(table(out / "regions.tsv"))


def test_bed_and_gff3_parse_back_to_the_regions(run):
    out, sequences = run
    lengths = {name: len(seq) for records in sequences.values() for name, seq in records.items()}
    regions = table(out / "regions.tsv")
    bed = [line.split("\t") for line in (out / "regions.bed").read_text().splitlines()]
    assert len(bed) == len(regions)
    for fields, row in zip(bed, regions):
        chrom, start, end, name, score, strand = fields  # BED6
        assert (chrom, int(start) + 1, int(end), name) == (row["sequence_id"], int(row["start"]), int(row["end"]),
                                                           row["region_id"])
        assert 0 <= int(score) <= 1000 and int(score) == round(1000 * float(row["mean_virus_score"]))
        assert strand == "." and 0 <= int(start) < int(end) <= lengths[chrom]
    lines = (out / "regions.gff3").read_text().splitlines()
    assert lines[0] == "##gff-version 3"
    declared, features = {}, []
    for line in lines[1:]:
        if line.startswith("##sequence-region"):
            _, seqid, start, end = line.split()
            declared[seqid] = (int(start), int(end))
            continue
        fields = line.split("\t")
        assert len(fields) == 9 and fields[0] in declared  # declared before its features
        seqid, source, kind, start, end, score, strand, phase, attributes = fields
        attrs = dict(item.split("=", 1) for item in attributes.split(";"))
        assert declared[seqid] == (1, lengths[seqid]) and 1 <= int(start) <= int(end) <= lengths[seqid]
        features.append((seqid, int(start), int(end), attrs["ID"], attrs["kind"]))
    assert features == [(r["sequence_id"], int(r["start"]), int(r["end"]), r["region_id"], r["kind"]) for r in regions]
    assert len({f[3] for f in features}) == len(features)


def test_fasta_records_are_the_input_substrings(run):
    out, sequences = run
    seqs = {name: seq for records in sequences.values() for name, seq in records.items()}
    viral = read_fasta(out / "viral_sequences.fna")
    called = [r["sequence_id"] for r in table(out / "contigs.tsv") if r["label"] == "virus"]
    assert list(viral) == called and all(viral[name] == seqs[name] for name in called)
    parts = read_fasta(out / "viral_regions.fna")
    partial = [r["region_id"] for r in table(out / "regions.tsv") if r["kind"] == "partial"]
    assert list(parts) == partial and len(partial) == 4
    for name, letters in parts.items():
        seq, coords = name.split("|region_")
        start, end = map(int, coords.split("_"))
        assert letters == seqs[seq][start - 1:end]


def test_highestscore_scores_option(tmp_path, run):
    out, _ = run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    assert call_main([str(copy), "tables.highestscore_scores=true", "tables.fasta_width=80"]) == 0
    plain = (out / "prediction_results_highestscore.csv").read_text().splitlines()
    wide = [line.split("\t") for line in (copy / "prediction_results_highestscore.csv").read_text().splitlines()]
    assert wide[0] == ["Modified_ID", "Is_Virus", "max_score_0", "max_score_1"]
    assert ["\t".join(row[:2]) for row in wide] == plain
    frames = [line.split("\t") for line in (out / "prediction_results.txt").read_text().splitlines()[1:]]
    for cid, is_virus, s0, s1 in wide[1:]:
        rows = [f for f in frames if f[0][:-2] == cid]
        assert float(s0) == max(float(f[2]) for f in rows) and float(s1) == max(float(f[3]) for f in rows)
        assert is_virus == str(float(s1) >= float(s0))
    read_fasta(copy / "viral_sequences.fna", width=80)


CALL_WITHOUT_TORCH = """
import sys
from vnp.call import main
code = main(sys.argv[1:])
assert "torch" not in sys.modules, "vnp call imported torch"
sys.exit(code)
"""


def call_subprocess(*args: str) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-c", CALL_WITHOUT_TORCH, *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120)


def test_vnp_call_reproduces_predict_then_a_stricter_cutoff_gives_a_subset(tmp_path, run):
    out, _ = run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    before = {name: (out / name).read_bytes() for name in FILES}
    proc = call_subprocess(str(copy))
    assert proc.returncode == 0, proc.stderr
    assert {name: (copy / name).read_bytes() for name in FILES} == before  # one code path, same bytes
    proc = call_subprocess(str(copy), "call.min_score=0.999", "call.min_fraction=1", "regions.switch_penalty=4")
    assert proc.returncode == 0, proc.stderr  # and torch was never imported: no model loaded
    assert (copy / "prediction_results.txt").read_bytes() == before["prediction_results.txt"]
    old = {r["sequence_id"]: r for r in table(out / "contigs.tsv")}
    new = {r["sequence_id"]: r for r in table(copy / "contigs.tsv")}
    old_viral = {name for name, row in old.items() if row["label"] == "virus"}
    new_viral = {name for name, row in new.items() if row["label"] == "virus"}
    assert new_viral <= old_viral and all(int(new[n]["viral_chunks"]) <= int(old[n]["viral_chunks"]) for n in old)

    def bases(path: Path) -> set[tuple[str, int]]:
        return {(r["sequence_id"], b) for r in table(path) for b in range(int(r["start"]), int(r["end"]) + 1)}

    assert bases(copy / "regions.tsv") <= bases(out / "regions.tsv")
    assert new_viral != old_viral or bases(copy / "regions.tsv") != bases(out / "regions.tsv")  # it did change
    record = json.loads((copy / "run.json").read_text())
    assert record["calls"]["call"]["min_score"] == 0.999 and record["calls"]["regions"]["switch_penalty"] == 4
    assert record["calls"]["written_by"] == "vnp call"
    assert record["counts"]["viral_sequences"] == len(new_viral)
    assert "min_score: 0.999" in (copy / "config.yaml").read_text()
    assert 'data-min-score="0.999"' in (copy / "report.html").read_text()  # the report follows the new calls
    assert not list(copy.glob("*.tmp"))


@pytest.mark.parametrize("override, message", [
    ("call.min_score=1.5", "call.min_score must be between 0 and 1"),
    ("call.min_fraction=0", "call.min_fraction must be above 0"),
    ("regions.switch_penalty=-1", "regions.switch_penalty must be"),
    ("regions.min_length=abc", "regions.min_length"),
    ("call.nope=1", "call.nope"),
    ("filter.min_length=10", "only call.*, regions.*, tables.* and calibration keys"),
    ("chunk_length=300", "only call.*, regions.*, tables.* and calibration keys"),
])
def test_bad_call_settings_are_one_line(tmp_path, run, capsys, override, message):
    out, _ = run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    assert call_main([str(copy), override]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and err.startswith("vnp: error: ")
    assert (copy / "contigs.tsv").read_bytes() == (out / "contigs.tsv").read_bytes()  # nothing lost


@pytest.mark.parametrize("override", ["call.high_margin=2", "regions.merge_gap=-5", "filter.max_n_fraction=1.5"])
def test_bad_settings_refused_by_predict(tmp_path, capsys, override):
    fasta = write_fasta(tmp_path / "x.fa", {"a": "ACGT" * 30})
    assert predict_main([str(fasta), "-o", str(tmp_path / "o"), "pack=tiny", override]) == 2
    err = capsys.readouterr().err.strip()
    assert override.split("=")[0] in err and "\n" not in err


def test_vnp_call_refuses_an_unfinished_run(tmp_path, run, capsys):
    out, _ = run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    next((copy / "work" / "parts").glob("part-*.npz")).unlink()  # as if the run had stopped early
    assert call_main([str(copy)]) == 2
    assert "unfinished" in capsys.readouterr().err
    (copy / "run.json").unlink()
    assert call_main([str(tmp_path / "nowhere")]) == 2
    assert "no such output folder" in capsys.readouterr().err
    assert all((copy / name).read_bytes() == (out / name).read_bytes() for name in RESULT_FILES)


def test_chunk_rows_are_each_sequences_chunks_with_their_span_frames_and_label(run):
    """chunks.tsv: one row per chunk of every sequence not filtered, in input order, 1-based
    inclusive spans by the original's rule, the frame count, and no_frames where nothing was kept."""
    from vnp.seq.chunking import chunk_spans

    out, sequences = run
    rows = table(out / "chunks.tsv")
    kept = [(name, seq) for records in sequences.values() for name, seq in records.items()
            if name not in ("too_short", "mostly_n")]
    assert [(r["chunk_id"], r["sequence_id"], r["start"], r["end"]) for r in rows] == [
        (f"{name}_chunk_{s.number}", name, str(s.start + 1), str(s.end)) for name, seq in kept
        for s in chunk_spans(len(seq), L)]
    stops = [r for r in rows if r["sequence_id"] == "stops"]
    assert stops and all(r["frames"] == "0" and r["label"] == "no_frames" for r in stops)
    others = [r for r in rows if r["sequence_id"] != "stops"]
    assert all(int(r["frames"]) > 0 and r["label"] in ("virus", "others") for r in others)
    assert {r["label"] for r in rows if r["sequence_id"] == "viral_only"} == {"virus"}
    assert {r["label"] for r in rows if r["sequence_id"] == "host_only"} == {"others"}
