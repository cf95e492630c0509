"""GenBank training inputs: a file cut short, inside a record or after one, is refused with one
line (Biopython warns and returns the partial record, or skips a cut `LOCUS` line); a record ID
used twice in one file is a duplicate, not a clash across inputs."""

from __future__ import annotations

from pathlib import Path

import pytest
from Bio import SeqIO
from Bio.Seq import Seq
from Bio.SeqRecord import SeqRecord

from vnp.run.folder import FeatureFolder
from vnp.run.plan import pack_inputs
from vnp.seq.seqio import record_pieces
from vnp.support.errors import InputError
from vnp.training.inputs import TrainingRecords, genbank_records


def write_genbank(path: Path, ids: list[str]) -> str:
    records = [SeqRecord(Seq("ACGT" * 50), id=rid, name=rid, annotations={"molecule_type": "DNA"}) for rid in ids]
    SeqIO.write(records, path, "genbank")
    return path.read_text()


def test_a_whole_file_reads(tmp_path):
    path = tmp_path / "ok.gbff"
    text = write_genbank(path, ["r0", "r1"])
    path.write_text(text + "\n\n")  # blank lines after the last record are fine
    assert [(r.id, len(r.seq)) for r, _ in genbank_records(path)] == [("r0", 200), ("r1", 200)]


@pytest.mark.parametrize("cut, message", [
    (lambda t: t[:-100], "record 'r1': the file ends inside this record (cut short?)"),
    (lambda t: t[:t.rindex("ORIGIN") + 30], "record 'r1': the file ends inside this record (cut short?)"),
    (lambda t: t + "LOCUS       r2", "the file ends inside the record after 'r1'"),
    (lambda t: t + "LOC", "the file ends after record 'r1' in a line that is not '//' ('LOC'): cut short?"),
    (lambda t: t[:t.rindex("LOCUS") + 30], "the file ends inside the record after 'r0'"),
])
def test_a_cut_file_is_one_line(tmp_path, cut, message):
    path = tmp_path / "cut.gbff"
    path.write_text(cut(write_genbank(path, ["r0", "r1"])))
    with pytest.raises(InputError) as err:
        list(genbank_records(path))
    assert message in str(err.value) and "\n" not in str(err.value)


def pack(tmp_path: Path, files: list[Path]) -> None:
    features = FeatureFolder(tmp_path / "features")
    reader = TrainingRecords({f: "virus" for f in files}, features)
    pack_inputs(files, features.work, read=lambda path: record_pieces(reader(path)))


def test_a_duplicate_within_one_file(tmp_path):
    path = tmp_path / "dup.gbff"
    write_genbank(path, ["r0", "r1", "r0"])
    with pytest.raises(InputError, match=r"dup.gbff: record 'r0': duplicate record ID \(chunk IDs would be"):
        pack(tmp_path, [path])


def test_one_id_in_two_files_is_a_clash_across_inputs(tmp_path):
    first, second = tmp_path / "a.gbff", tmp_path / "b.gbff"
    write_genbank(first, ["r0"])
    write_genbank(second, ["r1", "r0"])
    with pytest.raises(InputError, match=r"b.gbff: record 'r0': record ID also used in .*a.gbff"):
        pack(tmp_path, [first, second])
