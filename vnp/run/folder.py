"""OUT, the output folder of a run: one object names every path in it and owns what guards it.

`RunFolder(out)` is the only place where a path inside OUT is spelled. It checks that OUT is
usable, holds the lock that keeps a second run out (released by `close()`), reads and writes the
run record (`work/record.json`: the inputs' checksums and every setting that changes results) and
compares it with a new one, names the handshake files rank 0 and the other ranks exchange while
rank 0 prepares, and writes every file atomically (a temporary name, then a rename). Importing
it does not import torch (`vnp call` and `vnp report` use it).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from pathlib import Path
from typing import IO

from vnp.support import atomic
from vnp.support.errors import InputError
from vnp.support.paths import check_output_folder, file_sha256
from vnp.run.plan import IDS, INDEX, SEQUENCES

RUN_RECORD = "record.json"
LOCK = ".lock"
NONCE = "[0-9a-f]{12}"  # a run's handshake nonce (uuid4 hex)
# The exact names of the handshake files: nothing else in work/ is ever taken for one of them.
HANDSHAKE_FILES = re.compile(rf"(ready-{NONCE}\.json|remaining-{NONCE}\.npy|heartbeat-{NONCE}|stop-{NONCE})")
ALIVE_FILES = re.compile(r"alive-rank[0-9]+")
PART_FILES = re.compile(r"part-[0-9]{6}-[0-9a-f]{32}\.npz")  # vnp.run.store's part names
SHOWN_ENTRIES = 5  # entries named when a folder is refused

# Run-record keys that change results; a different value means a different run.
RESULT_KEYS = ("inputs", "models", "pack", "chunk_length", "unit_chunks", "precision", "esm_attention", "device",
               "save_embeddings", "filters")


class RunFolder:
    """OUT and everything in it (module docstring); one per run and process."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self._lock: IO | None = None  # the open lock file while this process holds OUT

    # --- paths --------------------------------------------------------------------------------
    @property
    def work(self) -> Path:
        """Packed inputs, committed progress, the run record, the handshake files."""
        return self.root / "work"

    @property
    def parts(self) -> Path:
        """Committed scores (`store.ScoreStore`), what a resume starts from."""
        return self.work / "parts"

    @property
    def embeddings(self) -> Path:
        """`save_embeddings=true`: the frames' embeddings, part by part."""
        return self.root / "embeddings"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def log(self, rank: int) -> Path:
        """This rank's log file (every command that has a run folder: predict, train)."""
        return self.logs / f"rank{rank}.log"

    @property
    def run_record_path(self) -> Path:
        return self.work / RUN_RECORD

    @property
    def index(self) -> Path:
        return self.work / INDEX

    @property
    def sequences(self) -> Path:
        return self.work / SEQUENCES

    @property
    def ids(self) -> Path:
        return self.work / IDS

    @property
    def tiny_pack(self) -> Path:
        """Where `pack=tiny` is built (offline, for tests and the demo)."""
        return self.work / "tiny_pack"

    @property
    def config_yaml(self) -> Path:
        """The settings of the run, written when it starts (and by `vnp call`)."""
        return self.root / "config.yaml"

    @property
    def run_json(self) -> Path:
        return self.root / "run.json"

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"

    @property
    def lock_path(self) -> Path:
        return self.work / LOCK

    def ready(self, nonce: str) -> Path:
        """Rank 0's outcome of preparing: the run description, or its failure."""
        return self.work / f"ready-{nonce}.json"

    def remaining(self, nonce: str) -> Path:
        """The work units left, next to the ready file (a list too long for JSON to be quick)."""
        return self.work / f"remaining-{nonce}.npy"

    def heartbeat(self, nonce: str) -> Path:
        """Touched by rank 0 while it prepares; the other ranks watch it."""
        return self.work / f"heartbeat-{nonce}"

    def stop_request(self, nonce: str) -> Path:
        """Made by a rank > 0 that got a stop signal while rank 0 prepares."""
        return self.work / f"stop-{nonce}"

    def alive(self, rank: int) -> Path:
        """Touched by rank > 0 while it runs (rank 0 looks at it when a collective fails)."""
        return self.work / f"alive-rank{rank}"

    # --- guards -------------------------------------------------------------------------------
    def is_vnp_folder(self) -> bool:
        """Whether OUT was made by vnp: it holds the lock file vnp creates before anything else."""
        return self.lock_path.is_file()

    def check_usable(self) -> None:
        """OUT is a folder (created if need be) that this process can write in, and either new,
        empty or vnp's own: vnp never writes into (or clears anything in) a folder of other files."""
        out = check_output_folder(self.root)
        if out.is_dir() and not self.is_vnp_folder():
            check_empty(out, "output folder")
        try:
            self.work.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            problem = "output folder is not writable" if out.is_dir() else "cannot create output folder"
            raise InputError(f"{out}: {problem} ({err.strerror})") from None
        probe = self.work / f".write-test-{os.getpid()}"
        try:
            probe.write_text("")
            probe.unlink()
        except OSError:
            raise InputError(f"{out}: output folder is not writable") from None

    def lock(self, busy: str = "another vnp run is using this output folder") -> None:
        """One run at a time per output folder (a second one would mix its progress with ours);
        `busy` says why OUT is refused when another process holds it. Held until `close()`."""
        try:
            handle = open(self.lock_path, "a+")
        except OSError as err:
            raise InputError(f"{self.lock_path}: cannot open the lock file ({err.strerror})") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise InputError(f"{self.root}: {busy}") from None
        self._lock = handle

    @property
    def locked(self) -> bool:
        """Whether this process holds OUT's lock (then what OUT holds is this run's to change)."""
        return self._lock is not None

    def close(self) -> None:
        """Release the lock (closing the file releases it)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> "RunFolder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- the run record -----------------------------------------------------------------------
    def read_run_record(self) -> dict | None:
        """The run record of the run OUT holds, if any."""
        return self.read_json(self.run_record_path) if self.run_record_path.exists() else None

    def write_run_record(self, run_record: dict) -> None:
        self.write_json(self.run_record_path, run_record)

    def forget_run_record(self) -> None:
        """The progress in OUT can no longer be resumed (its packed inputs are about to change)."""
        self.run_record_path.unlink(missing_ok=True)

    def holds_same_run(self, run_record: dict, pack, force: bool) -> bool:
        """Whether OUT holds the run `run_record` describes; a different one is refused with the
        first changed model or the changed keys, unless `force` (then it is to be replaced)."""
        old = self.read_run_record()
        same = old is not None and not differences(old, run_record)
        if old is not None and not same and not force:
            problem = changed_model(old, run_record, pack) or \
                f"holds a run with different {', '.join(differences(old, run_record))}"
            raise InputError(f"{self.root}: {problem}; rerun with force=true to start afresh there, "
                             "or choose another output folder")
        return same

    # --- clearing: only files of vnp's exact name forms -----------------------------------------
    def clear_progress(self) -> None:
        """Remove a previous run's progress (committed scores and embeddings, which the new run would
        otherwise mix with its own). Its tables, run.json and config.yaml stay until replaced."""
        for folder in (self.parts, self.embeddings):
            atomic.remove_matching(folder, lambda path: PART_FILES.fullmatch(path.name) or atomic.is_temporary(path))
            try:
                folder.rmdir()  # only if nothing else is in it
            except OSError:
                pass

    def remove_leftovers(self) -> None:
        """Temporary files of a run killed while writing (kill -9, a node lost): they can be large
        (a packed input) and are never resumed from. Called with OUT locked."""
        atomic.remove_matching(self.root, atomic.is_temporary)
        atomic.remove_matching(self.work, lambda path: atomic.is_temporary(path) or ALIVE_FILES.fullmatch(path.name))

    def remove_handshake_files(self) -> None:
        """The ready, remaining, heartbeat and stop files of earlier runs (or of this one, once all
        ranks have read them)."""
        atomic.remove_matching(self.work, lambda path: HANDSHAKE_FILES.fullmatch(path.name))

    # --- writing ------------------------------------------------------------------------------
    @staticmethod
    def read_json(path: Path):
        return json.loads(path.read_text())

    @staticmethod
    def write_json(path: Path, data, indent: int | None = 2) -> None:
        """`data` as JSON (and a newline), atomically (`vnp.support.atomic`)."""
        atomic.write_json(path, data, indent)

    @staticmethod
    def write_text(path: Path, text: str) -> None:
        """A temporary name next to `path`, then a rename: a reader never sees half a file."""
        atomic.write_text(path, text)


class TrainingFolder(RunFolder):
    """DIR of `vnp train`: a run folder (lock, logs, handshake files, `work/tiny_pack`) that holds
    the cached features of its training frames, the training checkpoint and what training leaves."""

    @property
    def features(self) -> "FeatureFolder":
        """The embeddings of the training frames, cached across runs with other `train.*` values."""
        return FeatureFolder(self.root / "features")

    @property
    def checkpoint(self) -> Path:
        """The classifier head's training state after the last finished epoch."""
        return self.work / "checkpoint.pt"

    @property
    def classifier(self) -> Path:
        """The trained head (safetensors + json, as `vnp pack convert` writes it)."""
        return self.root / "classifier"

    @property
    def pack_yaml(self) -> Path:
        """The pack of the trained head (`vnp predict pack=DIR/pack.yaml`)."""
        return self.root / "pack.yaml"

    @property
    def metrics_json(self) -> Path:
        return self.root / "metrics.json"

    @property
    def learning_curve(self) -> Path:
        return self.root / "learning_curve.png"


class FeatureFolder(RunFolder):
    """DIR/features: a run folder of its own, whose work/ holds the packed training inputs (with
    their CDS table and labels); beside it, its run record, the committed parts while the frames
    are embedded, then the consolidated arrays (features.npy last: the commit point)."""

    @property
    def run_record_path(self) -> Path:
        """The run record of the cached features (inputs with their labels, models, settings)."""
        return self.root / RUN_RECORD

    @property
    def parts(self) -> Path:
        """Committed feature parts (embeddings of finished work units), what a resume starts from."""
        return self.root / "parts"

    @property
    def matrix(self) -> Path:
        """features.npy: (frames, DNABERT-S + ESM2 dims) float32, frames in key order."""
        return self.root / "features.npy"

    @property
    def keys(self) -> Path:
        """keys.npy: each row's frame key (chunk * 6 + frame), increasing."""
        return self.root / "keys.npy"

    @property
    def labels(self) -> Path:
        """labels.npy: each row's class index (`vnp.models.CLASSES`)."""
        return self.root / "labels.npy"

    @property
    def arrays(self) -> tuple[Path, Path, Path]:
        return self.matrix, self.keys, self.labels

    @property
    def cds_text(self) -> Path:
        """Per record: its CDS translations joined by newlines, records back to back."""
        return self.work / "cds.bin"

    @property
    def cds_index(self) -> Path:
        """Per record: offset and length in cds.bin; length -1 = keep every frame (FASTA)."""
        return self.work / "cds_index.npy"

    @property
    def record_labels(self) -> Path:
        """Per record: its class index."""
        return self.work / "record_labels.npy"


def check_empty(folder: Path, what: str) -> None:
    """Refuse a folder that holds anything, naming what is there (a folder vnp did not make)."""
    try:
        names = sorted(os.listdir(folder))
    except OSError as err:
        raise InputError(f"{folder}: cannot read the {what} ({err.strerror})") from None
    if names:
        shown = ", ".join(repr(name) if name.isprintable() else ascii(name) for name in names[:SHOWN_ENTRIES])
        more = f" and {len(names) - SHOWN_ENTRIES} more" if len(names) > SHOWN_ENTRIES else ""
        raise InputError(f"{folder}: the {what} is not empty and not one vnp made (it holds {shown}{more}); "
                         "choose a new or empty folder")


def input_entries(paths) -> list[dict]:
    """Each input by resolved path, size and content (sha256), for the run record."""
    return [{"path": str(path.resolve()), "size": path.stat().st_size, "sha256": file_sha256(path)}
            for path in paths]


def new_run_record(inputs: list[dict], pack, chunk_length: int, precision: str, config, device, **more) -> dict:
    """What makes a run's results what they are: inputs by content, models by content, and the
    settings that change results (`config.batch.unit_chunks`, `config.esm_attention`), then `more`."""
    from vnp.models.memory import planned_unit_chunks
    from vnp.models.pack import fingerprint, model_digests  # imports torch: only runs that embed get here

    digests = model_digests(pack)  # models by content: a changed file is another model
    unit_chunks = planned_unit_chunks(config.batch, device, chunk_length, pack, precision)
    return {"inputs": inputs, "models": digests, "pack": fingerprint(pack, digests), "chunk_length": chunk_length,
            "unit_chunks": unit_chunks, "precision": precision,
            "esm_attention": config.esm_attention, "device": device.type, **more}


def keep_unit_size(record: dict, old: dict | None, configured: int) -> dict:
    """With the default unit size (`batch.unit_chunks=0`), a run resumed in OUT keeps the unit size
    its run record holds, whatever the card now (a GPU's default follows its memory)."""
    if configured or not isinstance(old, dict) or not isinstance(old.get("unit_chunks"), int):
        return record
    kept = {**record, "unit_chunks": old["unit_chunks"]}
    return kept if not differences(old, kept) else record


def differences(old: dict, new: dict) -> list[str]:
    """The result keys whose values differ between two run records (the pack fingerprint is not
    named again when a model already is)."""
    names = []
    for key in RESULT_KEYS:
        if old.get(key) != new.get(key) and not (key == "pack" and "models" in names):
            names.append("inputs (file contents or paths)" if key == "inputs" else key)
    return names


def changed_model(old: dict, new: dict, pack) -> str | None:
    """One line naming the first model whose content differs from the run recorded in OUT."""
    before = old.get("models")
    if not isinstance(before, dict):
        return None
    for role in ("classifier", "esm", "dnabert"):
        if before.get(role) != new["models"][role]:
            return (f"the {role} model {getattr(pack, role)} is not the one the run there used "
                    f"(it was {before.get(role)}, it is now {new['models'][role]})")
    return None
