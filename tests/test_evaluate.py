"""`vnp evaluate`: metrics per chunk and per sequence on hand-written tables, labels that name
exactly one sequence or chunk, vnp's own tables read as the report reads them, and every bad
table, labels file or output folder answered with one line."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest

from tests.helpers import one_error_line
from vnp.evaluate import main as evaluate_main

# ------------------------------------------------------------------------------------------
# Metrics on hand-written tables

CHUNKS = """chunk_id\tsequence_id\tstart\tend\tframes\tmax_score1\tmax_score2\tlabel
a_chunk_1\ta\t1\t150\t2\t0.100000\t0.900000\tvirus
a_chunk_2\ta\t120\t270\t1\t0.700000\t0.300000\tothers
b_chunk_1\tb\t1\t150\t0\tNA\tNA\tno_frames
c_chunk_1\tc\t1\t150\t3\t0.200000\t0.800000\tvirus
d_chunk_1\td\t1\t150\t1\t0.600000\t0.400000\tothers
"""
CONTIGS = """sequence_id\tlength\tchunks\tviral_chunks\tchunks_without_frames\tfraction_viral\t\
max_virus_score\tmean_virus_score\tlabel
a\t270\t2\t1\t0\t0.500000\t0.900000\t0.600000\tvirus
b\t150\t1\t0\t1\t0.000000\tNA\tNA\tno_frames
c\t150\t1\t1\t0\t1.000000\t0.800000\t0.800000\tvirus
d\t150\t1\t0\t0\t0.000000\t0.400000\t0.400000\tothers
"""


@pytest.fixture
def prediction(tmp_path) -> Path:
    (tmp_path / "chunks.tsv").write_text(CHUNKS)
    (tmp_path / "contigs.tsv").write_text(CONTIGS)
    return tmp_path


def test_evaluate_per_chunk_and_sequence(prediction, capsys):
    labels = prediction / "labels.tsv"
    labels.write_text("id\tlabel\na\tvirus\na_chunk_2\tothers\nb\tvirus\nc\tothers\nd\tothers\n")
    assert evaluate_main([str(prediction), str(labels)]) == 0
    result = json.loads((prediction / "evaluation.json").read_text())
    chunk, sequence = result["chunk"], result["sequence"]
    # chunks: a_1 virus->virus, a_2 others (its own label)->others, c_1 others->virus, d_1 others->others
    assert (chunk["scored"], chunk["unscored"]) == (4, 1)
    assert chunk["confusion_matrix"]["counts"] == [[2, 1], [0, 1]]
    assert chunk["accuracy"] == 0.75 and chunk["recall"] == 1.0 and chunk["precision"] == 0.5
    assert (sequence["scored"], sequence["unscored"]) == (3, 1)
    assert sequence["confusion_matrix"]["counts"] == [[1, 1], [0, 1]]
    assert sequence["auroc"] == 1.0  # a (0.9) above c (0.8) and d (0.4)
    assert "chunk\t4\t1\t0.7500" in capsys.readouterr().out
    assert (prediction / "roc.png").stat().st_size > 0


def test_a_level_with_nothing_scored_says_na(prediction, capsys):
    labels = prediction / "labels.tsv"
    labels.write_text("b\tvirus\n")  # b has no frames: no score at either level
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a ROC plot without curves draws no empty legend (matplotlib warns)
        assert evaluate_main([str(prediction), str(labels)]) == 0
    assert (prediction / "roc.png").stat().st_size > 0
    out = capsys.readouterr().out.splitlines()
    assert "chunk\t0\t1" + "\tNA" * 9 in out and "sequence\t0\t1" + "\tNA" * 9 in out


def test_every_cell_of_the_confusion_matrix_is_its_own(tmp_path, capsys):
    """TP 4, FN 2, FP 1, TN 3: no two cells equal, so a swap of any two is seen."""
    cases = [("virus", "virus", 0.9), ("virus", "virus", 0.85), ("virus", "virus", 0.8), ("virus", "virus", 0.75),
             ("virus", "others", 0.4), ("virus", "others", 0.3), ("others", "virus", 0.7),
             ("others", "others", 0.2), ("others", "others", 0.1), ("others", "others", 0.05)]
    chunks, contigs = [CHUNKS.splitlines()[0]], [CONTIGS.splitlines()[0]]
    for i, (_, called, score) in enumerate(cases):
        viral = int(called == "virus")
        chunks.append(f"s{i}_chunk_1\ts{i}\t1\t150\t1\t{1 - score:.6f}\t{score:.6f}\t{called}")
        contigs.append(f"s{i}\t150\t1\t{viral}\t0\t{viral:.6f}\t{score:.6f}\t{score:.6f}\t{called}")
    (tmp_path / "chunks.tsv").write_text("\n".join(chunks) + "\n")
    (tmp_path / "contigs.tsv").write_text("\n".join(contigs) + "\n")
    labels = tmp_path / "labels.tsv"
    labels.write_text("".join(f"s{i}\t{truth}\tsequence\n" for i, (truth, _, _) in enumerate(cases)))
    assert evaluate_main([str(tmp_path), str(labels)]) == 0
    result = json.loads((tmp_path / "evaluation.json").read_text())
    for level in ("chunk", "sequence"):
        values = result[level]
        assert values["confusion_matrix"] == {"rows_true_cols_predicted": ["others", "virus"],
                                              "counts": [[3, 1], [2, 4]]}
        assert (values["accuracy"], values["precision"]) == (0.7, 0.8)
        assert values["recall"] == pytest.approx(4 / 6) and values["f1"] == pytest.approx(8 / 11)
        assert values["auroc"] == pytest.approx(22 / 24)
    out = capsys.readouterr().out
    assert "\tTN\tFP\tFN\tTP\n" in out
    assert "sequence\t10\t0\t0.7000\t0.8000\t0.6667\t0.7273\t0.9167\t3\t1\t2\t4\n" in out + "\n"


@pytest.mark.parametrize("text, message", [
    ("zz\tvirus\n", "1 IDs are neither sequences nor chunks"),
    ("a\thost\n", "line 1: unknown label 'host'"),
    ("a virus\n", "line 1: expected 'id<TAB>label[<TAB>level]'"),
])
def test_evaluate_bad_labels_is_one_line(prediction, capsys, text, message):
    labels = prediction / "labels.tsv"
    labels.write_text(text)
    one_line_error(capsys, evaluate_main([str(prediction), str(labels)]), message)


def one_line_error(capsys, code: int, message: str) -> str:
    assert code == 2
    return one_error_line(capsys.readouterr().err, message)


# ------------------------------------------------------------------------------------------
# A label applies to what it names (issue 17, item 4)

# sequences `a` (2 chunks) and `a_chunk_1` (1 chunk): the ID a_chunk_1 names both the sequence
# and chunk 1 of a
CLASH_CHUNKS = """chunk_id\tsequence_id\tstart\tend\tframes\tmax_score1\tmax_score2\tlabel
a_chunk_1\ta\t1\t150\t2\t0.100000\t0.900000\tvirus
a_chunk_2\ta\t120\t270\t1\t0.200000\t0.800000\tvirus
a_chunk_1_chunk_1\ta_chunk_1\t1\t150\t1\t0.700000\t0.300000\tothers
"""
CLASH_CONTIGS = """sequence_id\tlength\tchunks\tviral_chunks\tchunks_without_frames\tfraction_viral\t\
max_virus_score\tmean_virus_score\tlabel
a\t270\t2\t2\t0\t1.000000\t0.900000\t0.850000\tvirus
a_chunk_1\t150\t1\t0\t0\t0.000000\t0.300000\t0.300000\tothers
"""


@pytest.fixture
def clash(tmp_path) -> Path:
    (tmp_path / "chunks.tsv").write_text(CLASH_CHUNKS)
    (tmp_path / "contigs.tsv").write_text(CLASH_CONTIGS)
    return tmp_path


def test_an_id_that_is_a_sequence_and_a_chunk_is_refused(clash, capsys):
    labels = clash / "labels.tsv"
    labels.write_text("a\tvirus\na_chunk_1\tothers\n")
    line = one_line_error(capsys, evaluate_main([str(clash), str(labels)]),
                          "line 2: 'a_chunk_1' is both a sequence ID and a chunk ID")
    assert "third column" in line
    assert not (clash / "evaluation.json").exists()


def test_a_level_column_says_what_an_id_names(clash, capsys):
    labels = clash / "labels.tsv"
    labels.write_text("id\tlabel\tlevel\na\tvirus\na_chunk_1\tothers\tsequence\n")
    assert evaluate_main([str(clash), str(labels)]) == 0
    result = json.loads((clash / "evaluation.json").read_text())
    # chunk 1 of `a` keeps a's label (virus), not the label of the sequence a_chunk_1 (others):
    # all three chunks are predicted right
    assert result["chunk"]["confusion_matrix"]["counts"] == [[1, 0], [0, 2]]
    assert result["sequence"]["confusion_matrix"]["counts"] == [[1, 0], [0, 1]]


def test_one_id_may_be_labelled_once_at_each_level(clash, capsys):
    labels = clash / "labels.tsv"
    labels.write_text("a_chunk_1\tothers\tsequence\na_chunk_1\tvirus\tchunk\n")
    assert evaluate_main([str(clash), str(labels)]) == 0
    result = json.loads((clash / "evaluation.json").read_text())
    assert result["chunk"]["scored"] == 2 and result["sequence"]["scored"] == 1  # the chunk, and the sequence's chunk


def test_recall_without_a_viral_truth_is_zero_and_a_second_evaluation_replaces_the_first(prediction, tmp_path):
    labels = prediction / "labels.tsv"
    labels.write_text("a\tothers\nc\tothers\nd\tothers\n")
    report = tmp_path / "evaluation"
    for _ in range(2):  # -o a folder of an earlier evaluation: replaced
        assert evaluate_main([str(prediction), str(labels), "-o", str(report)]) == 0
    result = json.loads((report / "evaluation.json").read_text())
    assert result["sequence"]["recall"] == 0.0 and result["sequence"]["precision"] == 0.0


def test_a_chunk_level_label_applies_to_the_chunk_only(clash, capsys):
    labels = clash / "labels.tsv"
    labels.write_text("a\tvirus\na_chunk_1\tothers\tchunk\n")
    assert evaluate_main([str(clash), str(labels)]) == 0
    result = json.loads((clash / "evaluation.json").read_text())
    chunk = result["chunk"]
    # a_chunk_1 (of a): others, predicted virus; a_chunk_2: virus (a's label); the chunk of the
    # sequence a_chunk_1 has no label
    assert (chunk["scored"], chunk["unlabelled"]) == (2, 1)
    assert chunk["confusion_matrix"]["counts"] == [[0, 1], [0, 1]]
    assert result["sequence"]["scored"] == 1  # a only


@pytest.mark.parametrize("text, message", [
    ("a_chunk_2\tvirus\tsequence\n", "line 1: 1 IDs are not sequences of"),
    ("a\tvirus\tchunk\n", "line 1: 1 IDs are not chunks of"),
    ("a\tvirus\tcontig\n", "line 1: unknown level 'contig'"),
    ("a\tvirus\na\tothers\tsequence\n", "line 2: 'a' is labelled twice (also line 1)"),
    ("a\tvirus\tsequence\na\tothers\n", "line 2: 'a' is labelled twice (also line 1)"),
])
def test_bad_levels_are_one_line(clash, capsys, text, message):
    labels = clash / "labels.tsv"
    labels.write_text(text)
    one_line_error(capsys, evaluate_main([str(clash), str(labels)]), message)


# ------------------------------------------------------------------------------------------
# vnp's own tables read one way (issue 17, item 6) and bad tables (item 8)


def test_ids_that_start_with_a_quote(tmp_path, capsys):
    """csv's quoting would join rows or drop the quote; the report's reader takes the ID as it is."""
    (tmp_path / "chunks.tsv").write_text(CHUNKS.replace("\na", '\n"a').replace("\ta\t", '\t"a\t'))
    (tmp_path / "contigs.tsv").write_text(CONTIGS.replace("\na\t", '\n"a\t'))
    labels = tmp_path / "labels.tsv"
    labels.write_text('"a\tvirus\n"a_chunk_2\tothers\nb\tvirus\nc\tothers\nd\tothers\n')
    assert evaluate_main([str(tmp_path), str(labels)]) == 0
    result = json.loads((tmp_path / "evaluation.json").read_text())
    assert result["chunk"]["confusion_matrix"]["counts"] == [[2, 1], [0, 1]]
    assert result["sequence"]["confusion_matrix"]["counts"] == [[1, 1], [0, 1]]


@pytest.mark.parametrize("damage, message", [
    (lambda t: t.replace(b"0.900000", b"0.9\xff"), "chunks.tsv: row 2: not UTF-8 text (at column 33)"),
    (lambda t: t.replace(b"0.900000", b"high"), "chunks.tsv: rows 2-6:"),
    (lambda t: t.replace(b"max_score2", b"score"), "chunks.tsv: no column 'max_score2' in its header"),
    (lambda t: t.replace(b"\tvirus\n", b"\n", 1), "chunks.tsv: rows 2-6:"),
])
def test_a_damaged_table_is_one_line(prediction, capsys, damage, message):
    chunks = prediction / "chunks.tsv"
    chunks.write_bytes(damage(chunks.read_bytes()))
    labels = prediction / "labels.tsv"
    labels.write_text("a\tvirus\n")
    one_line_error(capsys, evaluate_main([str(prediction), str(labels)]), message)


def test_a_missing_table_is_one_line(prediction, capsys):
    (prediction / "contigs.tsv").unlink()
    labels = prediction / "labels.tsv"
    labels.write_text("a\tvirus\n")
    one_line_error(capsys, evaluate_main([str(prediction), str(labels)]), "contigs.tsv: not found (is ")


# ------------------------------------------------------------------------------------------
# Labels files and output folders that are not what they should be (items 8, 13, 14)


def test_a_header_line_names_any_id_column(prediction, capsys):
    labels = prediction / "labels.tsv"
    labels.write_text("# my labels\nsequence_id\tlabel\na\tvirus\nd\tothers\n")
    assert evaluate_main([str(prediction), str(labels)]) == 0
    assert json.loads((prediction / "evaluation.json").read_text())["sequence"]["scored"] == 2


@pytest.mark.parametrize("kind, message", [
    ("folder", "labels file is a folder, not a regular file"),
    ("fifo", "labels file is a FIFO (named pipe), not a regular file"),
    ("missing", "labels file not found"),
    ("latin1", "line 2: labels file is not UTF-8 text (at column 2)"),
])
def test_a_labels_path_that_is_not_a_labels_file(prediction, capsys, kind, message):
    labels = prediction / "labels.tsv"
    if kind == "folder":
        labels.mkdir()
    elif kind == "fifo":
        os.mkfifo(labels)
    elif kind == "latin1":
        labels.write_bytes(b"a\tvirus\nd\xe9\tothers\n")
    one_line_error(capsys, evaluate_main([str(prediction), str(labels)]), message)


@pytest.mark.parametrize("kind, message", [
    ("file", "report: -o is an existing file, not a folder"),
    ("dangling", "report: output folder is a broken symbolic link"),
    ("unwritable", "cannot create the folder"),
    ("foreign", "report: the evaluation folder (-o) is not empty and not one vnp made (it holds 'notes.txt')"),
])
def test_an_output_folder_that_cannot_be_one(prediction, capsys, kind, message):
    labels = prediction / "labels.tsv"
    labels.write_text("a\tvirus\n")
    target = prediction / "report"
    if kind == "file":
        target.write_text("keep me")
    elif kind == "dangling":
        target.symlink_to(prediction / "nowhere")
    elif kind == "foreign":  # a folder of the user's: nothing written into it
        target.mkdir()
        (target / "notes.txt").write_text("keep me")
    else:
        target = Path("/proc/vnp-evaluation")  # no process, root or not, can create this
    one_line_error(capsys, evaluate_main([str(prediction), str(labels), "-o", str(target)]), message)
    if kind == "file":
        assert target.read_text() == "keep me"
    if kind == "foreign":
        assert [p.name for p in target.iterdir()] == ["notes.txt"]


def test_the_roc_plot_stays_within_the_unit_square(prediction, monkeypatch):
    """Every curve and the chance diagonal run from (0, 0) to (1, 1): rates are never above 1."""
    from vnp import evaluate

    figures, save_png = [], evaluate.save_png
    monkeypatch.setattr(evaluate, "save_png",
                        lambda fig, path, files=None: figures.append(fig) or save_png(fig, path, files=files))
    labels = prediction / "labels.tsv"
    labels.write_text("a\tvirus\nc\tothers\nd\tothers\n")
    assert evaluate_main([str(prediction), str(labels)]) == 0
    lines = figures[0].axes[0].get_lines()
    assert len(lines) == 3  # per chunk, per sequence, chance
    for line in lines:
        x, y = line.get_xydata().T
        assert (x[0], y[0], x[-1], y[-1]) == (0, 0, 1, 1) and 0 <= y.min() <= y.max() <= 1
