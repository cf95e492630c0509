"""The training manifest and its inputs: records with their labels, and the frames kept by the
original's training rule (GenBank: CDS translations; FASTA: every stop-free frame)."""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from vnp.run.plan import ChunkPlan, check_inputs
from vnp.seq.frames import Chunk, Frame
from vnp.seq.seqio import NUCLEOTIDE_LETTERS, Record, check_readable, iter_records, open_binary
from vnp.support.errors import InputError, where
from vnp.training.config import AMBIGUOUS, LABELS


@dataclass
class ManifestEntry:
    path: Path
    label: str


def read_manifest(manifest: Path) -> list[ManifestEntry]:
    """`path<TAB>label` lines; every file readable, every label known, both classes present."""
    check_readable(manifest)
    entries = []
    for number, line in enumerate(manifest.read_text().splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.rstrip("\r").split("\t")
        if number == 1 and fields == ["path", "label"]:
            continue  # a header line
        if len(fields) != 2 or not fields[0]:
            raise InputError(f"{where(manifest, line=number)}: expected 'path<TAB>label', got {line!r}")
        name, label = fields
        if label not in LABELS:
            raise InputError(f"{where(manifest, line=number)}: unknown label {label!r} (expected virus or others)")
        path = Path(name) if Path(name).is_absolute() else manifest.parent / name
        try:
            check_readable(path)
        except InputError as err:
            raise InputError(f"{where(manifest, line=number)}: {err}") from None
        entries.append(ManifestEntry(path, label))
    check_inputs([str(e.path) for e in entries])
    missing = [name for name in LABELS if name not in {e.label for e in entries}]
    if missing:
        raise InputError(f"{manifest}: no file labelled {' or '.join(missing)}; training needs both virus and others")
    return entries


def is_genbank(path: Path) -> bool:
    with open_binary(path) as fh:
        return fh.read(4096).lstrip().startswith(b"LOCUS")


def genbank_records(path: Path) -> Iterator[tuple[Record, list[str]]]:
    """Each GenBank record (Biopython's parser) with its CDS `translation` qualifiers, in order."""
    from Bio import BiopythonParserWarning, SeqIO
    from Bio.Seq import UndefinedSequenceError

    with io.TextIOWrapper(open_binary(path), encoding="ascii", errors="replace") as text, warnings.catch_warnings():
        warnings.simplefilter("ignore", BiopythonParserWarning)  # odd layouts parse; broken ones raise below
        try:
            for record in SeqIO.parse(text, "genbank"):
                try:
                    seq = str(record.seq)
                except UndefinedSequenceError:
                    raise InputError(f"{where(path, record.id)}: GenBank record without a sequence "
                                     "(no ORIGIN)") from None
                bad = seq.encode("ascii", "replace").translate(None, NUCLEOTIDE_LETTERS)
                if bad:
                    raise InputError(f"{where(path, record.id)}: invalid character {chr(bad[0])!r} in the sequence")
                proteins = [f.qualifiers.get("translation", [""])[0] for f in record.features if f.type == "CDS"]
                yield Record(record.id, seq, None), proteins  # GenBank: no line numbers
        except ValueError as err:  # Biopython's parse errors
            raise InputError(f"{path}: not a readable GenBank file ({str(err).splitlines()[0]})") from None


CDS_TEXT = "cds.bin"  # per record: its CDS translations joined by newlines, records back to back


CDS_INDEX = "cds_index.npy"  # per record: offset and length in cds.bin; length -1 = keep every frame


RECORD_LABELS = "record_labels.npy"


FEATURE_RECORD = "record.json"  # DIR/features/record.json: the run record of the cached features


class TrainingRecords:
    """The record reader handed to `pack_inputs`: GenBank or FASTA/FASTQ by content. Streams each
    record's CDS translations into `work/cds.bin` (none for FASTA: every stop-free frame is kept)
    and notes its label; `finish()` commits both after the packing succeeded."""

    def __init__(self, labels: dict[Path, str], work: Path):
        self.labels_of_path, self.work = labels, work
        work.mkdir(parents=True, exist_ok=True)
        self.text = open(work / (CDS_TEXT + ".tmp"), "wb")
        self.index: list[tuple[int, int]] = []
        self.labels: list[int] = []

    def __call__(self, path: Path) -> Iterator[Record]:
        label = LABELS[self.labels_of_path[path]]
        if is_genbank(path):
            for record, proteins in genbank_records(path):
                # One string per record: a frame's protein is in it iff it is in one of the
                # translations (the newline is no amino acid, so a match cannot span two).
                self._note(label, "\n".join(proteins).encode("ascii", "replace"))
                yield record
        else:
            for record in iter_records(path):
                self._note(label, None)
                yield record

    def _note(self, label: int, proteins: bytes | None) -> None:
        self.labels.append(label)
        self.index.append((self.text.tell(), -1 if proteins is None else len(proteins)))
        if proteins:
            self.text.write(proteins)

    def finish(self) -> None:
        self.text.close()
        np.save(self.work / RECORD_LABELS, np.asarray(self.labels, dtype=np.int64))
        np.save(self.work / CDS_INDEX, np.asarray(self.index, dtype=np.int64).reshape(-1, 2))
        os.replace(self.work / (CDS_TEXT + ".tmp"), self.work / CDS_TEXT)  # the commit point


class TrainingFrames:
    """The `select_frames(chunk, frames)` hook: the original's training rule (module docstring).
    Each rank reads a record's translations from `work/cds.bin` when its chunks come up (a unit's
    chunks are consecutive, so one record is read once a unit), not the whole table."""

    def __init__(self, work: Path, plan: ChunkPlan):
        self.path = work / CDS_TEXT
        self.index = np.load(work / CDS_INDEX)
        self.plan = plan
        self.record, self.proteins = -1, None

    def _proteins(self, record: int) -> str | None:
        if record != self.record:
            offset, length = (int(v) for v in self.index[record])
            if length < 0:
                self.proteins = None
            else:
                with open(self.path, "rb") as fh:
                    fh.seek(offset)
                    self.proteins = fh.read(length).decode("ascii", "replace")
            self.record = record
        return self.proteins

    def __call__(self, chunk: Chunk, frames: list[Frame]) -> list[Frame]:
        if not AMBIGUOUS.isdisjoint(chunk.seq.upper()):
            return []
        proteins = self._proteins(int(self.plan.record_of(np.asarray(chunk.index))))
        if proteins is None:
            return frames
        return [frame for frame in frames if frame.protein in proteins]

