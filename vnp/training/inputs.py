"""The training manifest and its inputs: records with their labels, and the frames kept by the
original's training rule (GenBank: CDS translations; FASTA: every stop-free frame)."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from vnp.run.folder import FeatureFolder
from vnp.run.plan import ChunkPlan, check_inputs
from vnp.seq.frames import Chunk, Frame
from vnp.seq.seqio import NUCLEOTIDE_LETTERS, Record, check_readable, iter_records, open_binary
from vnp.support.atomic import AtomicFiles
from vnp.support.errors import InputError, where
from vnp.models import CLASSES
from vnp.support.labelled import labelled_lines
from vnp.training.config import AMBIGUOUS


@dataclass
class ManifestEntry:
    path: Path
    label: str


def read_manifest(manifest: Path) -> list[ManifestEntry]:
    """`path<TAB>label` lines (vnp.support.labelled); every file readable, every label known, both
    classes present."""
    entries = []
    for number, (name, label) in labelled_lines(manifest, "manifest", ("path", "label")):
        if label not in CLASSES:
            raise InputError(f"{where(manifest, line=number)}: unknown label {label!r} (expected virus or others)")
        path = Path(name) if Path(name).is_absolute() else manifest.parent / name
        try:
            check_readable(path)
        except InputError as err:
            raise InputError(f"{where(manifest, line=number)}: {err}") from None
        entries.append(ManifestEntry(path, label))
    check_inputs([str(e.path) for e in entries])
    missing = [name for name in CLASSES if name not in {e.label for e in entries}]
    if missing:
        raise InputError(f"{manifest}: no file labelled {' or '.join(missing)}; training needs both virus and others")
    return entries


def is_genbank(path: Path) -> bool:
    with open_binary(path) as fh:
        return fh.read(4096).lstrip().startswith(b"LOCUS")


class _LastLine(io.TextIOBase):
    """A text stream that remembers its last line that is not blank: the GenBank parser skips text
    after a record's `//` that does not start a record (a cut `LOCUS` line), so the reader looks."""

    def __init__(self, text: io.TextIOBase):
        self.text, self.last = text, ""

    def readable(self) -> bool:
        return True

    def readline(self, size: int = -1) -> str:
        line = self.text.readline(size)
        if line.strip():
            self.last = line
        return line

    def read(self, size: int = -1) -> str:
        text = self.text.read(size)
        if text.strip():
            self.last = text.rstrip().rsplit("\n", 1)[-1]
        return text


def genbank_records(path: Path) -> Iterator[tuple[Record, list[str]]]:
    """Each GenBank record (Biopython's parser) with its CDS `translation` qualifiers, in order.
    A file cut short (inside a record, or after one in a `LOCUS` line) is refused, as a cut FASTQ is."""
    from Bio import BiopythonParserWarning, SeqIO
    from Bio.Seq import UndefinedSequenceError

    with io.TextIOWrapper(open_binary(path), encoding="ascii", errors="replace") as raw, \
            warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", BiopythonParserWarning)  # odd layouts parse; cut or broken ones are refused
        text = _LastLine(raw)
        record_id = None
        try:
            for record in SeqIO.parse(text, "genbank"):
                record_id = record.id
                _refuse_cut(path, record_id, caught)
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
            problem = str(err).splitlines()[0]
            if problem.startswith("Premature end"):  # e.g. a LOCUS line or a header cut short
                record = f"the record after '{record_id}'" if record_id else "its first record"
                raise InputError(f"{path}: the file ends inside {record} ({problem}): cut short?") from None
            raise InputError(f"{path}: not a readable GenBank file ({problem})") from None
        if text.last.strip() != "//":
            after = f"after record '{record_id}'" if record_id else "before its first record is complete"
            raise InputError(f"{path}: the file ends {after} in a line that is not '//' "
                             f"({text.last.strip()[:40]!r}): cut short?")


def _refuse_cut(path: Path, record_id: str, caught: list[warnings.WarningMessage]) -> None:
    """Biopython warns, and returns what it read, when a file ends inside a record's sequence."""
    cut = [w for w in caught if str(w.message).startswith("Premature end of file")]
    caught.clear()
    if cut:
        raise InputError(f"{where(path, record_id)}: the file ends inside this record (cut short?)")


class TrainingRecords:
    """The record reader handed to `pack_inputs`: GenBank or FASTA/FASTQ by content. Streams each
    record's CDS translations into the folder's `cds_text` (none for FASTA: every stop-free frame
    is kept) and notes its label; `finish()` commits both after the packing succeeded."""

    def __init__(self, labels: dict[Path, str], folder: FeatureFolder):
        self.labels_of_path, self.folder = labels, folder
        folder.work.mkdir(parents=True, exist_ok=True)
        self.files = AtomicFiles()  # cds.bin, its index and the labels: committed by `finish`
        self.text = open(self.files.temporary(folder.cds_text), "wb")
        self.index: list[tuple[int, int]] = []
        self.labels: list[int] = []

    def __call__(self, path: Path) -> Iterator[Record]:
        label = CLASSES.index(self.labels_of_path[path])
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
        with self.files:
            for path, array in ((self.folder.record_labels, np.asarray(self.labels, dtype=np.int64)),
                                (self.folder.cds_index, np.asarray(self.index, dtype=np.int64).reshape(-1, 2))):
                with self.files.open(path, "wb") as fh:
                    np.save(fh, array)
            self.files.replace_last(self.folder.cds_text)  # the commit point

    def discard(self) -> None:
        """Packing failed: no temporary is left behind."""
        self.text.close()
        self.files.discard()


class TrainingFrames:
    """The `select_frames(chunk, frames)` hook: the original's training rule (module docstring).
    Each rank reads a record's translations from the folder's `cds_text` when its chunks come up
    (a unit's chunks are consecutive, so one record is read once a unit), not the whole table."""

    def __init__(self, folder: FeatureFolder, plan: ChunkPlan):
        self.path = folder.cds_text
        self.index = np.load(folder.cds_index)
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

