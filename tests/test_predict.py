"""`vnp predict` end to end: real processes under python, torchrun, accelerate and SLURM variables."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import (
    BIN,
    ROOT,
    built_once,
    child_env,
    free_port,
    predict_ok,
    run,
    slurm_job_id,
    tables,
    write_mixed_input,
)
from vnp.support.config import iter_help
from vnp.predict import main as predict_main

# The same threads per rank everywhere: BLAS picks its summation order by thread count.
COMMON = ["pack=tiny", "progress=false", "threads=1", "batch.unit_chunks=2", "dist.timeout_s=60"]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    """Shared read-only by the test run's workers (`built_once`), like the runs below."""
    return built_once(tmp_path_factory, "predict-input", lambda folder: write_mixed_input(folder / "mixed.fa")) / "mixed.fa"


@pytest.fixture(scope="module")
def single_run(tmp_path_factory, mixed) -> Path:
    """`python -m vnp.predict` in a process of its own: the tables every launcher must give."""
    return built_once(tmp_path_factory, "predict-single",
                      lambda folder: predict_ok(1, mixed, folder / "out", COMMON)) / "out"


@pytest.fixture(scope="module")
def saved_single(tmp_path_factory, mixed) -> Path:
    """One rank in this process, with save_embeddings=true."""
    def build(folder: Path) -> None:
        assert predict_main([str(mixed), "-o", str(folder / "out"), *COMMON, "save_embeddings=true"]) == 0
    return built_once(tmp_path_factory, "predict-saved", build) / "out"


def test_single_process_outputs(single_run, mixed):
    rows = (single_run / "prediction_results.txt").read_text().splitlines()
    assert rows[0] == "Sequence_ID\tPrediction\tscore1\tscore2"
    chunks = (single_run / "chunks.tsv").read_text().splitlines()[1:]
    contigs = (single_run / "contigs.tsv").read_text().splitlines()[1:]
    assert len(contigs) == 10
    # ceil(n / 500) chunks per sequence, listed even without frames
    assert len(chunks) == sum(-(-n // 500) for n in [90, 500, 1001, 2, 640, 1500, 333, 2100, 45, 777])
    no_frames = [c for c in chunks if c.endswith("\tno_frames")]
    assert any(c.startswith("read3_chunk_1\t") for c in no_frames)  # 2 bp
    assert any(c.startswith("read6_chunk_1\t") for c in no_frames)  # stops in every frame
    label = (single_run / "contigs.tsv").read_text().splitlines()[0].split("\t").index("label")
    by_id = {c.split("\t")[0]: c.split("\t") for c in contigs}
    assert by_id["read3"][label] == "no_frames" and by_id["read6"][label] == "no_frames"
    frames_in_chunks = sum(int(c.split("\t")[4]) for c in chunks)
    assert frames_in_chunks == len(rows) - 1
    # every per-chunk call is consistent with its frames
    best = (single_run / "prediction_results_highestscore.csv").read_text().splitlines()[1:]
    assert len(best) == len(chunks) - len(no_frames)
    record = json.loads((single_run / "run.json").read_text())
    assert record["world_size"] == 1 and record["counts"]["frames"] == len(rows) - 1
    assert (single_run / "config.yaml").read_text().count("unit_chunks: 2") == 1


@pytest.fixture(scope="module")
def expected_scores(single_run, mixed) -> dict[str, tuple[float, float]]:
    return expected_scores_original_way(single_run, mixed)


def expected_scores_original_way(out: Path, mixed: Path) -> dict[str, tuple[float, float]]:
    """One frame at a time through both embedders (the original's call pattern), concatenated,
    then the classifier."""

    from vnp.seq.chunking import chunk_spans
    from vnp.models.classifier import load_classifier, score
    from vnp.models.dnabert import load_dnabert
    from vnp.models.esm import load_esm
    from vnp.seq.seqio import iter_records
    from vnp.seq.frames import Chunk, translate_chunks

    pack = out / "work" / "tiny_pack"
    dnabert = load_dnabert(str(pack / "dnabert"))
    esm_model = load_esm(str(pack / "esm2_tiny.pt"), attention="fair-esm")
    classifier = load_classifier(pack / "classifier")
    converter = esm_model.alphabet.get_batch_converter()
    expected = {}
    for record in iter_records(mixed):
        for span in chunk_spans(len(record.seq), 500):
            (frames,) = translate_chunks([Chunk(0, record.id, span.number, 0, 0, record.seq[span.start:span.end])])
            for frame in frames:
                ids = torch.tensor([dnabert.tokenizer.encode(frame.nucleotide).ids])
                with torch.no_grad():
                    nt = dnabert.model(ids)[0].mean(dim=0)
                    _, _, toks = converter([(frame.id, frame.protein)])
                    rep = esm_model.model(toks, repr_layers=[esm_model.layer])["representations"][esm_model.layer]
                    aa = rep[0, 1:len(frame.protein) + 1].mean(0)
                    probs = score(classifier, torch.cat([nt, aa])[None])[0]
                expected[frame.id] = (float(probs[0]), float(probs[1]))
    return expected


def test_scores_match_the_original_call_pattern(single_run, expected_scores):
    expected = expected_scores
    rows = [r.split("\t") for r in (single_run / "prediction_results.txt").read_text().splitlines()[1:]]
    assert [r[0] for r in rows] == list(expected)  # same frames, same order
    worst = max(max(abs(float(r[2]) - expected[r[0]][0]), abs(float(r[3]) - expected[r[0]][1])) for r in rows)
    assert worst < 1e-5
    assert all(r[1] == ("virus" if float(r[3]) > float(r[2]) else "others") for r in rows)


def read_tsv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def test_chunk_and_contig_calls_follow_the_scores(single_run, expected_scores):
    """chunks.tsv and contigs.tsv against the scores computed one frame at a time: the highest
    scores of each chunk, its call (virus when its best virus score >= its best other score), and
    each sequence's share of viral chunks, scores and majority label."""
    by_chunk: dict[str, list[tuple[float, float]]] = {}
    for frame_id, pair in expected_scores.items():
        by_chunk.setdefault(frame_id[:-2], []).append(pair)
    by_sequence: dict[str, list[tuple[float, float]]] = {}
    for row in read_tsv(single_run / "chunks.tsv"):
        pairs = by_chunk.get(row["chunk_id"], [])
        assert int(row["frames"]) == len(pairs), row
        if not pairs:
            assert (row["max_score1"], row["max_score2"], row["label"]) == ("NA", "NA", "no_frames")
            continue
        best = (max(p[0] for p in pairs), max(p[1] for p in pairs))
        assert abs(float(row["max_score1"]) - best[0]) < 2e-5 and abs(float(row["max_score2"]) - best[1]) < 2e-5
        assert row["label"] == ("virus" if best[1] >= best[0] else "others"), row
        by_sequence.setdefault(row["sequence_id"], []).append(best)
    for row in read_tsv(single_run / "contigs.tsv"):
        bests = by_sequence.get(row["sequence_id"], [])
        if not bests:
            assert (row["fraction_viral"], row["label"]) == ("NA", "no_frames")
            continue
        viral = sum(b[1] >= b[0] for b in bests)
        assert int(row["viral_chunks"]) == viral and abs(float(row["fraction_viral"]) - viral / len(bests)) < 1e-6
        assert abs(float(row["max_virus_score"]) - max(b[1] for b in bests)) < 2e-5, row
        assert abs(float(row["mean_virus_score"]) - sum(b[1] for b in bests) / len(bests)) < 2e-5, row
        assert row["label"] == ("virus" if viral / len(bests) >= 0.5 else "others"), row
    # every sequence with a frame was checked (read2, read3, read4 and read6 have none)
    assert sorted(by_sequence) == ["read0", "read1", "read5", "read7", "read8", "read9"]


@pytest.mark.slow
@pytest.mark.parametrize("launch", ["torchrun-3", "gpus-2"])
def test_torchrun_tables_and_embeddings_identical(single_run, saved_single, mixed, tmp_path, launch):
    """The ranks deal units by cost, so embeddings parts arrive out of input order: same tables,
    same IDs and rows as one rank. On 3 ranks by torchrun, and on 2 by `vnp predict --gpus 0,1`,
    which starts torchrun itself (device=cpu: the flag sets the ranks, whatever the device)."""
    from vnp.results.tables import load_embeddings

    out = tmp_path / "out"
    args = [*COMMON, "save_embeddings=true"]
    if launch == "gpus-2":
        proc = run([str(BIN / "vnp"), "predict", "--gpus", "0,1", str(mixed), "-o", str(out), "device=cpu", *args])
        assert proc.returncode == 0, proc.stderr
    else:
        predict_ok(3, mixed, out, args)
    assert json.loads((out / "run.json").read_text())["world_size"] == int(launch[-1])
    assert tables(out) == tables(single_run) == tables(saved_single)
    (ids1, vectors1), (ids, vectors) = load_embeddings(saved_single), load_embeddings(out)
    assert list(ids) == list(ids1) and np.array_equal(vectors, vectors1)


@pytest.mark.slow
def test_accelerate_launch_tables_identical(single_run, mixed, tmp_path):
    out = tmp_path / "out"
    # Without GPUs accelerate starts several processes only with --multi_gpu (torchrun underneath).
    proc = run([str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
                "-m", "vnp.predict", str(mixed), "-o", str(out), *COMMON])
    assert proc.returncode == 0, proc.stderr
    assert tables(out) == tables(single_run)


@pytest.mark.slow
def test_slurm_variables_tables_identical(single_run, mixed, tmp_path):
    out = tmp_path / "out"
    job_id = slurm_job_id()
    procs = []
    for rank in range(3):
        env = child_env()
        env.update(SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank), SLURM_NTASKS="3", SLURM_TASKS_PER_NODE="3",
                   SLURM_NODELIST="localhost", SLURM_JOB_ID=job_id)
        procs.append(subprocess.Popen([sys.executable, "-m", "vnp.predict", str(mixed), "-o", str(out), *COMMON],
                                      env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = [(p.wait(timeout=240), p.stderr.read()) for p in procs]
    assert all(code == 0 for code, _ in results), results
    assert tables(out) == tables(single_run)
    assert json.loads((out / "run.json").read_text())["launcher"] == "slurm"


@pytest.mark.slow
def test_more_ranks_than_chunks(tmp_path):
    small = tmp_path / "small.fa"
    small.write_text(">a\n" + "ATGGCC" * 20 + "\n>b\nAC\n")
    single, multi = tmp_path / "single", tmp_path / "multi"
    args = [str(small), "pack=tiny", "progress=false", "threads=1", "batch.unit_chunks=1"]
    assert predict_main(["-o", str(single), *args]) == 0
    proc = run([str(BIN / "torchrun"), "--standalone", "--nproc_per_node=3", "-m", "vnp.predict", "-o", str(multi), *args])
    assert proc.returncode == 0, proc.stderr
    assert tables(multi) == tables(single)


def test_save_embeddings(saved_single):
    out = saved_single
    from vnp.results.tables import load_embeddings

    ids, vectors = load_embeddings(out)
    rows = [r.split("\t")[0] for r in (out / "prediction_results.txt").read_text().splitlines()[1:]]
    assert list(ids) == rows
    assert vectors.dtype == np.float32 and vectors.shape == (len(rows), 48 + 64)
    from vnp.models.classifier import load_classifier, score

    probs = score(load_classifier(out / "work" / "tiny_pack" / "classifier"), torch.from_numpy(vectors)).numpy()
    written = np.array([[float(x) for x in r.split("\t")[2:]] for r in
                        (out / "prediction_results.txt").read_text().splitlines()[1:]])
    assert np.abs(probs - written).max() < 1e-6


def test_run_json_reports_engine_timings_and_progress(single_run):
    record = json.loads((single_run / "run.json").read_text())
    (rank0,) = record["timings_s"]["per_rank"]
    assert {"rank", "busy_s", "wait_s", "loop_s", "peak_rss_mib"} <= set(rank0)
    assert 0 < rank0["busy_s"] <= rank0["loop_s"] and rank0["wait_s"] >= 0
    progress = record["progress"]
    assert 0 < len(progress) <= 1000
    assert progress[-1]["chunks"] == record["counts"]["chunks"] and progress[-1]["frames"] == record["counts"]["frames"]
    assert all(a["t_s"] <= b["t_s"] and a["frames"] <= b["frames"] for a, b in zip(progress, progress[1:]))


def test_config_is_written_when_the_run_starts(tmp_path, mixed, monkeypatch, capsys):
    import vnp.predict

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(vnp.predict, "_finish", fail)
    out = tmp_path / "out"
    assert predict_main([str(mixed), "-o", str(out), *COMMON, "batch.unit_chunks=3"]) == 1
    assert "disk full" in capsys.readouterr().err
    assert "unit_chunks: 3" in (out / "config.yaml").read_text()


def test_help_documents_every_key(capsys):
    with pytest.raises(SystemExit):
        predict_main(["--help"])
    text = capsys.readouterr().out
    for key, _, _ in iter_help():
        assert key in text


@pytest.mark.parametrize("override, message", [
    ("nope=1", "key 'nope'"), ("batch.unit_chunks=-1", "batch.unit_chunks must be positive"),
    ("precision=fp8", "precision must be"),
])
def test_bad_config_is_one_line(tmp_path, mixed, capsys, override, message):
    assert predict_main([str(mixed), "-o", str(tmp_path / "o"), override]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_published_pack_without_classifier_is_refused(tmp_path, mixed, capsys):
    assert predict_main([str(mixed), "-o", str(tmp_path / "o"), "pack=500"]) == 2
    assert "classifier=" in capsys.readouterr().err
