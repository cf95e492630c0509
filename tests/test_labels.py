"""Hand-written `name<TAB>label` files read one way (vnp.support.labelled): `vnp train`'s manifest
and `vnp evaluate`'s labels skip blank lines, `#` comments and a header line the same way (the
first other line, when its second column reads `label`), and refuse a file that is not one with
one line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import one_error_line
from vnp.support.errors import InputError
from vnp.support.labelled import labelled_lines
from vnp.train import main as train_main
from vnp.training.inputs import read_manifest


def two_classes(folder: Path) -> None:
    (folder / "v.fa").write_text(">v1\nACGTACGTAC\n")
    (folder / "o.fa").write_text(">o1\nTTGCAATTGC\n")


@pytest.mark.parametrize("header", ["path\tlabel\n", "file\tlabel\n", "# files\n\npath\tlabel\n", ""])
def test_a_manifest_header_is_any_first_line_labelled_label(tmp_path, header):
    two_classes(tmp_path)
    manifest = tmp_path / "m.tsv"
    manifest.write_text(header + "v.fa\tvirus\no.fa\tothers\n")
    assert [(e.path.name, e.label) for e in read_manifest(manifest)] == [("v.fa", "virus"), ("o.fa", "others")]


@pytest.mark.parametrize("header", ["id\tlabel\n", "sequence_id\tlabel\n", "chunk_id\tlabel\tlevel\n",
                                    "# truth\nsequence_id\tlabel\n"])
def test_a_labels_header_is_any_first_line_labelled_label(tmp_path, header):
    labels = tmp_path / "labels.tsv"
    labels.write_text(header + "s1\tvirus\n")
    assert list(labelled_lines(labels, "labels file", ("id", "label", "level"), optional=1)) == \
        [(header.count("\n") + 1, ["s1", "virus"])]


def test_a_label_line_after_the_first_is_never_a_header(tmp_path):
    labels = tmp_path / "labels.tsv"
    labels.write_text("s1\tvirus\nid\tlabel\n")
    assert [fields for _, fields in labelled_lines(labels, "labels file", ("id", "label"))] == \
        [["s1", "virus"], ["id", "label"]]  # the caller refuses the label 'label'


@pytest.mark.parametrize("kind, message", [
    ("latin1", "m.tsv: line 2: manifest is not UTF-8 text (at column 2)"),
    ("folder", "m.tsv: manifest is a folder, not a regular file"),
    ("fifo", "m.tsv: manifest is a FIFO (named pipe), not a regular file"),
    ("columns", "m.tsv: line 1: expected 'path<TAB>label', got 'v.fa\\tvirus\\tx'"),
])
def test_a_bad_manifest_is_one_line_exit_2(tmp_path, capsys, kind, message):
    """A non-UTF-8 manifest ended in "rank 0 failed", exit 1."""
    two_classes(tmp_path)
    manifest = tmp_path / "m.tsv"
    if kind == "latin1":
        manifest.write_bytes(b"v.fa\tvirus\no\xe9.fa\tothers\n")
    elif kind == "folder":
        manifest.mkdir()
    elif kind == "fifo":
        os.mkfifo(manifest)
    else:
        manifest.write_text("v.fa\tvirus\tx\n")
    assert train_main([str(manifest), "-o", str(tmp_path / "out"), "pack=tiny", "progress=false"]) == 2
    one_error_line(capsys.readouterr().err, message)


def test_an_empty_labels_file_says_so(tmp_path):
    from vnp.evaluate import read_labels

    labels = tmp_path / "labels.tsv"
    labels.write_text("# nothing yet\nid\tlabel\n")
    with pytest.raises(InputError, match="labels.tsv: no labels"):
        read_labels(labels)
