"""`vnp train` and `vnp evaluate`: the original's training frame rule, a separable task, DDP over 1
and 2 ranks, resume after kill -9, bad manifests."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from Bio import SeqIO
from Bio.Data.CodonTable import standard_dna_table
from Bio.Seq import Seq
from Bio.SeqFeature import FeatureLocation, SeqFeature
from Bio.SeqRecord import SeqRecord
from safetensors.numpy import load_file

from tests.helpers import ROOT, built_once, child_env, launcher, one_error_line, run
from vnp.demo import SENSE_CODONS, random_dna
from vnp.evaluate import main as evaluate_main
from vnp.predict import main as predict_main
from vnp.run.folder import FeatureFolder
from vnp.run.plan import load_plan, pack_inputs, read_chunks
from vnp.seq.seqio import record_pieces
from vnp.training.inputs import TrainingFrames, TrainingRecords
from vnp.train import main as train_main
from vnp.seq.frames import FRAME_NAMES, translate_chunks

COMMON = ["pack=tiny", "progress=false", "threads=1", "batch.unit_chunks=8", "dist.timeout_s=60", "chunk_length=150"]

# ------------------------------------------------------------------------------------------
# An independent oracle: the original's split_fasta_chunk and identify_seq(istraindata=True)

CODONS = {**standard_dna_table.forward_table, **{c: "*" for c in standard_dna_table.stop_codons}}


def oracle_chunks(record_id: str, seq: str, size: int) -> list[tuple[str, str]]:
    n = len(seq)
    count = -(-n // size)
    surplus = count * size - n
    lower = int(surplus / count)
    extra = surplus - lower * (count - 1)
    shifts = [lower + 1] * extra + [lower] * (count - 1 - extra) + [0]
    out, moved = [], 0
    for start, shift in zip(range(0, n, size), shifts):
        piece = seq[start - moved:start - moved + size] if start > 1 else seq[start:start + size]
        out.append((f"{record_id}_chunk_{start // size + 1}", piece))
        moved += shift
    return out


def oracle_rc(seq: str) -> str:
    return seq.translate(str.maketrans("ACGTacgt", "TGCAtgca"))[::-1]


def oracle_frames(seqid: str, sequence: str, proteins: list[str]) -> list[tuple[str, str, str]]:
    sequence = sequence.upper()
    if any(base in sequence for base in "NRYMKSWHBVD"):
        return []
    strands = [sequence] * 3 + [oracle_rc(sequence)] * 3
    kept = []
    for num, strand in enumerate(strands, start=1):
        frame = (num - 1) % 3
        protein = "".join(CODONS.get(strand[i:i + 3], "") for i in range(frame, len(strand) - 2, 3))
        if "*" in protein or not any(protein in p for p in proteins):
            continue
        length = 3 * len(protein)
        name = f"F{num}" if num <= 3 else f"R{num - 3}"
        kept.append((seqid + name, strand[frame:frame + 1 + length], protein))
    return kept


# ------------------------------------------------------------------------------------------
# Synthetic GenBank records


def coding(rng: random.Random, codons: int, pool=SENSE_CODONS) -> str:
    return "".join(rng.choices(pool, k=codons))


def gene_record(rid: str, seq: str, genes: list[tuple[int, int, int]], translate: bool = True) -> SeqRecord:
    record = SeqRecord(Seq(seq), id=rid, name=rid[:16], description="synthetic", annotations={"molecule_type": "DNA"})
    for start, end, strand in genes:
        feature = SeqFeature(FeatureLocation(start, end, strand=strand), type="CDS")
        if translate:
            feature.qualifiers["translation"] = [str(feature.extract(record.seq).upper().translate()).rstrip("*")]
        record.features.append(feature)
    return record


def mixed_records(rng: random.Random) -> list[SeqRecord]:
    """Forward and reverse genes, ambiguous bases, lower case, a CDS without translation, none."""
    forward = coding(rng, 120)  # 360 bp
    reverse = oracle_rc(coding(rng, 100))  # 300 bp, read on the minus strand
    seq1 = random_dna(rng, 50) + forward + random_dna(rng, 40) + reverse + random_dna(rng, 77)
    seq1 = seq1[:200] + seq1[200:260].lower() + seq1[260:]
    seq2 = random_dna(rng, 20) + coding(rng, 200) + random_dna(rng, 31)
    seq2 = seq2[:300] + "N" + seq2[301:500] + "R" + seq2[501:]
    seq3 = coding(rng, 90)
    seq4 = random_dna(rng, 20) + coding(rng, 60)
    return [gene_record("rec1.1", seq1, [(50, 410, 1), (450, 750, -1)]),
            gene_record("rec2.1", seq2, [(20, 620, 1)]),
            gene_record("rec3.1", seq3, [(0, 270, 1)], translate=False),
            gene_record("rec4.1", seq4, [])]


def test_training_frames_match_the_original_rule(tmp_path):
    rng = random.Random(3)
    records = mixed_records(rng)
    path = tmp_path / "mixed.gbff"
    SeqIO.write(records, path, "genbank")
    size = 150
    expected = []
    for record in records:
        proteins = [f.qualifiers.get("translation", [""])[0] for f in record.features if f.type == "CDS"]
        for chunk_id, piece in oracle_chunks(record.id, str(record.seq), size):
            expected += oracle_frames(chunk_id, piece, proteins)

    features = FeatureFolder(tmp_path / "features")
    reader = TrainingRecords({path: "virus"}, features)
    pack_inputs([path], features.work, read=lambda path: record_pieces(reader(path)))
    reader.finish()
    plan = load_plan(features.work, size)
    chunks = read_chunks(plan, features.sequences, 0, plan.n_chunks)
    rule = TrainingFrames(features, plan)
    got = [(f"{c.id}{FRAME_NAMES[f.index]}", f.nucleotide, f.protein)
           for c, frames in zip(chunks, translate_chunks(chunks)) for f in rule(c, frames)]
    assert got == expected
    names = [name for name, _, _ in got]
    assert any("R" in name[-2:] for name in names) and any("F" in name[-2:] for name in names)
    assert not any(name.startswith(("rec3.1", "rec4.1")) for name in names)  # no translation, no CDS
    assert not any(name.startswith(("rec2.1_chunk_3", "rec2.1_chunk_4")) for name in names)  # N and R
    all_stop_free = sum(len(frames) for frames in translate_chunks(chunks))
    assert 0 < len(got) < all_stop_free


# ------------------------------------------------------------------------------------------
# A separable task: GC-rich genes are "virus", AT-rich genes are "others"

GC_CODONS = tuple(c for c in SENSE_CODONS if sum(b in "GC" for b in c) >= 2)
AT_CODONS = tuple(c for c in SENSE_CODONS if sum(b in "GC" for b in c) <= 1)


def write_class(path: Path, prefix: str, pool, n: int, seed: int) -> list[SeqRecord]:
    rng = random.Random(seed)
    records = [gene_record(f"{prefix}{i}", coding(rng, 200, pool), [(0, 600, 1)]) for i in range(n)]
    SeqIO.write(records, path, "genbank")
    return records


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """Shared read-only by the test run's workers (`built_once`), like the one-rank run."""
    def build(folder: Path) -> None:
        write_class(folder / "virus.gbff", "v", GC_CODONS, 60, 1)
        write_class(folder / "others.gbff", "o", AT_CODONS, 60, 2)
        (folder / "manifest.tsv").write_text("path\tlabel\nvirus.gbff\tvirus\nothers.gbff\tothers\n")
    return built_once(tmp_path_factory, "train-data", build) / "manifest.tsv"


def train_ok(ranks: int, manifest: Path, out: Path, args: list[str]) -> dict:
    proc = run([*launcher(ranks), "vnp.train", str(manifest), "-o", str(out), *COMMON, *args])
    assert proc.returncode == 0, proc.stderr
    return json.loads((out / "metrics.json").read_text())


def weights(out: Path) -> dict[str, np.ndarray]:
    return load_file(str(out / "classifier" / "classifier.safetensors"))


FEW_STEPS = ["train.max_epochs=6", "train.patience=6", "train.lr=0.01"]


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory, manifest) -> Path:
    """`vnp train` on one rank, in this process (read-only: tests copy it)."""
    def build(folder: Path) -> None:
        assert train_main([str(manifest), "-o", str(folder / "out"), *COMMON, *FEW_STEPS]) == 0
    return built_once(tmp_path_factory, "train-one", build) / "out"


def test_outputs_and_features(one_rank, manifest):
    metrics = json.loads((one_rank / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2, 3, 4, 5, 6]
    for key in ("train_loss", "val_loss", "accuracy", "precision", "recall", "f1", "auroc"):
        assert all(e[key] is not None for e in metrics["epochs"]), key
    frames = metrics["frames"]
    assert frames["virus"] > 0 and frames["others"] > 0
    assert len(metrics["held_out"]) == frames["val"] == int((frames["train"] + frames["val"]) * 0.1)
    assert (one_rank / "learning_curve.png").stat().st_size > 0
    assert (one_rank / "work" / "tiny_pack" / "pack.yaml").is_file()  # built in work/, as predict builds it
    assert not (one_rank / "tiny_pack").exists()
    keys = np.load(one_rank / "features" / "keys.npy")
    assert np.load(one_rank / "features" / "features.npy").shape == (len(keys), 48 + 64)
    assert len(keys) == frames["virus"] + frames["others"]


@pytest.mark.slow
def test_two_ranks_give_the_weights_of_one(one_rank, manifest, tmp_path):
    """DDP is real: same seed and global batch, 2 ranks (gloo) vs 1, dropout on (per-frame masks)."""
    out = tmp_path / "two"
    metrics = train_ok(2, manifest, out, FEW_STEPS)
    assert metrics["world_size"] == 2
    one, two = weights(one_rank), weights(out)
    assert one.keys() == two.keys()
    for name in one:
        np.testing.assert_allclose(two[name], one[name], atol=1e-5, rtol=0, err_msg=name)
    moved = np.abs(one["hidden_layer.weight"]).sum()
    assert moved > 0
    assert json.loads((one_rank / "metrics.json").read_text())["held_out"] == metrics["held_out"]


def test_trained_head_separates_and_features_are_cached(one_rank, manifest, tmp_path):
    """Other hyperparameters in the same DIR: no embedding again; held-out accuracy well above chance;
    the pack predicts and `vnp evaluate` measures the run (all in this process)."""
    out = tmp_path / "out"
    shutil.copytree(one_rank, out)
    before = (out / "features" / "features.npy").stat().st_mtime_ns
    assert train_main([str(manifest), "-o", str(out), *COMMON, "train.max_epochs=12", "train.lr=0.02"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert (out / "features" / "features.npy").stat().st_mtime_ns == before
    best = metrics["epochs"][metrics["best_epoch"] - 1]
    assert best["accuracy"] >= 0.9 and best["auroc"] >= 0.95

    rng = random.Random(11)
    fasta = tmp_path / "test.fa"
    with open(fasta, "w") as fh:
        for i in range(6):
            fh.write(f">tv{i}\n{coding(rng, 200, GC_CODONS)}\n>to{i}\n{coding(rng, 200, AT_CODONS)}\n")
    pred = tmp_path / "pred"
    assert predict_main([str(fasta), "-o", str(pred), f"pack={out / 'pack.yaml'}", "progress=false", "threads=1"]) == 0
    labels = tmp_path / "labels.tsv"
    labels.write_text("".join(f"tv{i}\tvirus\nto{i}\tothers\n" for i in range(6)))
    assert evaluate_main([str(pred), str(labels)]) == 0
    result = json.loads((pred / "evaluation.json").read_text())
    assert result["sequence"]["scored"] == 12
    assert result["chunk"]["accuracy"] >= 0.8 and result["sequence"]["auroc"] >= 0.9
    assert sum(map(sum, result["chunk"]["confusion_matrix"]["counts"])) == result["chunk"]["scored"]
    assert (pred / "roc.png").stat().st_size > 0


@pytest.mark.slow
def test_resume_after_kill_gives_the_same_weights(one_rank, manifest, tmp_path):
    killed = tmp_path / "killed"
    killed.mkdir()
    shutil.copytree(one_rank / "features", killed / "features")  # the cache: only training runs
    (killed / "work").mkdir()
    shutil.copy(one_rank / "work" / ".lock", killed / "work" / ".lock")  # a folder vnp made (issue 17)
    proc = subprocess.Popen([sys.executable, "-m", "vnp.train", str(manifest), "-o", str(killed), *COMMON, *FEW_STEPS],
                            env=child_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    checkpoint = killed / "work" / "checkpoint.pt"
    deadline = time.time() + 120
    while not checkpoint.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline
        time.sleep(0.002)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    import torch

    assert torch.load(checkpoint, weights_only=True)["epoch"] < 6  # killed mid-training
    metrics = train_ok(1, manifest, killed, FEW_STEPS)
    assert metrics["epochs"] == json.loads((one_rank / "metrics.json").read_text())["epochs"]
    a, b = weights(one_rank), weights(killed)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


# ------------------------------------------------------------------------------------------
# Bad manifests: one line, exit 2


def write_bad(tmp_path: Path, case: str) -> Path:
    rng = random.Random(5)
    good = tmp_path / "v.gbff"
    SeqIO.write([gene_record("g1", coding(rng, 100), [(0, 300, 1)])], good, "genbank")
    stops = tmp_path / "stops.fa"  # stop codons in all six frames: no frame kept
    stops.write_text(">s1\n" + "TAACTAACTAACTTAGTTAGTTAG" * 20 + "\n")
    broken = tmp_path / "broken.gbff"  # a CDS location cut short
    broken.write_text(good.read_text().replace("CDS             1..300", "CDS             join(1.."))
    lines = {"missing": "v.gbff\tvirus\nnothere.fa\tothers\n",
             "genbank": "broken.gbff\tvirus\nstops.fa\tothers\n",
             "label": "v.gbff\tvirus\nstops.fa\thost\n",
             "one_class": "v.gbff\tvirus\n",
             "no_frames": "v.gbff\tvirus\nstops.fa\tothers\n"}[case]
    manifest = tmp_path / "m.tsv"
    manifest.write_text(lines)
    return manifest


@pytest.mark.parametrize("case, message", [
    ("missing", "nothere.fa: no such file"),
    ("label", "line 2: unknown label 'host'"),
    ("genbank", "broken.gbff: not a readable GenBank file"),
    ("one_class", "no file labelled others"),
    ("no_frames", "no frame of class 'others' was kept"),
])
def test_bad_manifest_is_one_line(tmp_path, capsys, case, message):
    manifest = write_bad(tmp_path, case)
    in_process = [a for a in COMMON if not a.startswith("threads=")]  # leave pytest's threads alone
    assert train_main([str(manifest), "-o", str(tmp_path / "out"), *in_process]) == 2
    one_error_line(capsys.readouterr().err, message)


def test_bad_train_key_is_one_line(tmp_path, capsys):
    manifest = write_bad(tmp_path, "no_frames")
    assert train_main([str(manifest), "-o", str(tmp_path / "o"), "train.holdout=2"]) == 2
    assert "train.holdout must be between 0 and 1" in capsys.readouterr().err


@pytest.mark.slow
def test_features_resume_after_sigterm(one_rank, manifest, tmp_path):
    """Stopped while embedding (SIGTERM, as SLURM preemption), the rerun embeds only what is left
    and ends with the features and weights of an uninterrupted run."""
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "vnp.train", str(manifest), "-o", str(out), *COMMON, *FEW_STEPS],
                            env=child_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list((out / "features" / "parts").glob("part-*.npz")):
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143, proc.stderr.read()
    assert not (out / "features" / "features.npy").exists()
    train_ok(1, manifest, out, FEW_STEPS)
    for name in ("features.npy", "keys.npy", "labels.npy"):
        assert (out / "features" / name).read_bytes() == (one_rank / "features" / name).read_bytes(), name
    a, b = weights(one_rank), weights(out)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_consolidate_orders_frames_whatever_order_units_arrived(tmp_path):
    """The engine may deliver units in cost order: features.npy is in frame order regardless."""
    from vnp.run.store import write_atomic
    from vnp.training.features import consolidate

    features = FeatureFolder(tmp_path)
    parts = features.parts
    parts.mkdir()
    unit_keys = {0: [0, 3, 7], 1: [13, 20], 2: [], 3: [30, 31, 40]}  # 2 chunks (12 keys) a unit
    for number, units in enumerate([[3], [1, 2], [0]]):
        keys = np.asarray([k for u in units for k in unit_keys[u]], dtype=np.int64)
        write_atomic(parts, number, {"units": np.asarray(units, dtype=np.int64), "keys": keys,
                                     "embeddings": np.repeat(keys[:, None], 4, axis=1).astype(np.float32)})
    first_chunk = np.asarray([0, 3, 8])  # record 0: chunks 0-2, record 1: chunks 3-7
    consolidate(features, 4, np.asarray([1, 0]), first_chunk)
    keys = np.load(features.keys)
    assert keys.tolist() == sorted(k for ks in unit_keys.values() for k in ks)
    np.testing.assert_array_equal(np.load(features.matrix)[:, 0], keys.astype(np.float32))
    assert np.load(features.labels).tolist() == [1 if k // 6 < 3 else 0 for k in keys]
    assert not parts.exists()


def test_the_learning_curve_labels_both_panels_and_its_lines_stay_apart():
    """Accuracy, F1 and AUROC often coincide: each line has its own marker and line style, and the
    metric panel says what its axis shows."""
    from vnp.training.outputs import learning_curve_figure

    history = [{"epoch": e, "train_loss": 0.7 / e, "val_loss": 0.8 / e, "accuracy": 1.0, "f1": 1.0, "auroc": 1.0}
               for e in range(1, 5)]
    fig = learning_curve_figure(history)
    for ax in fig.axes:
        assert ax.get_xlabel() and ax.get_ylabel() and ax.get_legend() is not None
        styles = [(line.get_linestyle(), line.get_marker()) for line in ax.get_lines()]
        assert len(set(styles)) == len(styles)
