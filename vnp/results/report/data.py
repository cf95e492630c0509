"""Reading a finished run's OUT for the report (and `vnp evaluate`): no matplotlib, no HTML.

It reads only the files in OUT (run.json, config.yaml, contigs.tsv, chunks.tsv and, when the run has
them, summary.tsv and regions.tsv), by header name, so runs of older versions still get a report.
Bounded for any run size: tables are streamed in batches into histograms and top-N lists, and only
the top N sequences get a score track.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Iterable, Iterator

import numpy as np

from vnp.run.folder import RunFolder
from vnp.support.errors import InputError

TOP_N = 10


BATCH_ROWS = 200_000


SCORE_BINS = np.linspace(0.0, 1.0, 51)


SHARE_BINS = np.linspace(0.0, 1.0, 21)


TABLE_ROWS = 200  # the most rows of a per-input table shown


def open_table(path: Path) -> IO[bytes]:
    """A table of OUT for reading, as bytes: `_next_lines` decodes them (UTF-8, as vnp writes them)."""
    try:
        return open(path, "rb")
    except OSError as err:
        raise InputError(f"{path}: cannot read ({err.strerror})") from None


def table_header(path: Path, required: tuple[str, ...]) -> list[str]:
    """The column names of a table; InputError when one of `required` is not among them."""
    with open_table(path) as fh:
        first_line = _next_lines(fh, 1, path, -1)
    header = first_line[0].rstrip("\r\n").split("\t") if first_line else [""]
    missing = [name for name in required if name not in header]
    if missing:
        raise InputError(f"{path}: no column {missing[0]!r} in its header")
    return header


def _next_lines(fh: IO[bytes], n: int | None, path: Path, first: int) -> list[str]:
    """The next `n` lines (None: all) of a table after its first `first` rows (-1: the header is
    next), as text; InputError naming the row of a byte that is not UTF-8."""
    text = []
    for i, line in enumerate(itertools.islice(fh, n)):
        try:
            text.append(line.decode("utf-8"))
        except UnicodeDecodeError as err:
            row = "header" if first + i < 0 else f"row {first + i + 2}"
            raise InputError(f"{path}: {row}: not UTF-8 text (at column {err.start + 1}); is it a table written "
                             "by vnp?") from None
    return text


def _row(header: list[str], line: str) -> dict[str, str]:
    """A table row by header name; a row cut short has empty values."""
    fields = line.rstrip("\r\n").split("\t")
    return {name: fields[i] if i < len(fields) else "" for i, name in enumerate(header)}


def number(text: str) -> float:
    """A table's number; NA (or empty) is NaN."""
    return np.nan if text in ("NA", "") else float(text)


def read_columns(path: Path, names: dict[str, type], batch_rows: int = BATCH_ROWS) -> Iterator[dict[str, np.ndarray]]:
    """Those of the named columns that a tab-separated table has, in batches of rows: each as
    float (NA is NaN), int or str, as `names` says.

    numpy's C parser splits the lines and parses the numbers (a csv loop in Python is several times
    slower on millions of rows), and only the named columns are kept, so memory stays at one batch."""
    header = table_header(path, ())
    with open_table(path) as fh:
        fh.readline()
        present = [name for name in names if name in header]
        usecols = [header.index(name) for name in present]
        # one parse per batch: a record of the columns (str as Python objects, of any length)
        dtype = [(name, {float: np.float64, int: np.int64, str: object}[names[name]]) for name in present]
        converters = {header.index(name): number for name in present if names[name] is float}
        first = 0
        while lines := _next_lines(fh, batch_rows, path, first):
            try:
                table = np.loadtxt(lines, dtype=dtype, delimiter="\t", usecols=usecols, comments=None, ndmin=1,
                                   converters=converters)
            except ValueError as err:
                raise InputError(f"{path}: rows {first + 2}-{first + len(lines) + 1}: {err}") from None
            yield {name: table[name] for name in present}
            first += len(lines)


def fetch_rows(path: Path, wanted: Iterable[int]) -> dict[int, dict[str, str]]:
    """Whole rows of a table by their 0-based index (after the header): header name -> value."""
    wanted = set(wanted)
    found: dict[int, dict[str, str]] = {}
    header = table_header(path, ())
    with open_table(path) as fh:
        fh.readline()
        for first in itertools.count(0, BATCH_ROWS):
            lines = _next_lines(fh, BATCH_ROWS, path, first)
            if not lines or len(found) == len(wanted):
                break
            for i in wanted.intersection(range(first, first + len(lines))):
                found[i] = _row(header, lines[i - first])
    return found


def _values(column: np.ndarray, known: Iterable[str]) -> list[str]:
    """The distinct values of a column of few distinct values (labels): those already known that
    it holds, plus new ones; cheaper than np.unique, which sorts every string."""
    known = list(known)
    new = column[~np.isin(column, known)] if known else column
    return known + (np.unique(new).tolist() if len(new) else [])


def _count(counts: dict[str, int], column: np.ndarray) -> None:
    for value in _values(column, counts):
        counts[value] = counts.get(value, 0) + int((column == value).sum())


@dataclass
class Top:
    """The row numbers of the best `n` rows seen so far by sort keys (larger first, then earlier rows)."""

    n: int
    keys: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def add(self, keys: np.ndarray, first_row: int) -> None:
        """`keys`: [rows, k] sort keys, compared left to right, larger first."""
        rows = np.arange(first_row, first_row + len(keys))
        if len(self.rows):
            keys, rows = np.concatenate([self.keys, keys]), np.concatenate([self.rows, rows])
        best = np.lexsort([rows] + [-keys[:, i] for i in reversed(range(keys.shape[1]))])[:self.n]
        self.keys, self.rows = keys[best], rows[best]


@dataclass
class Contigs:
    sequences: int = 0
    labels: dict[str, int] = field(default_factory=dict)
    confidence: dict[str, int] = field(default_factory=dict)
    share_hist: np.ndarray = field(default_factory=lambda: np.zeros(len(SHARE_BINS) - 1, np.int64))
    top: list[dict[str, str]] = field(default_factory=list)  # whole rows, best first
    first_chunk: dict[str, int] = field(default_factory=dict)  # top sequence -> its first row in chunks.tsv
    columns: list[str] = field(default_factory=list)
    probabilities: np.ndarray | None = None  # virus_probability, decreasing, NaN dropped (with a calibration)


def read_contigs(path: Path, top: int) -> Contigs:
    """Label counts, the histogram of viral chunk shares and the top sequences of contigs.tsv."""
    result = Contigs(columns=table_header(path, ("sequence_id", "length", "chunks", "fraction_viral",
                                                 "max_virus_score", "label")))
    best = Top(top)
    chunk_counts, probabilities = [], []
    for batch in read_columns(path, {"label": str, "confidence": str, "fraction_viral": float,
                                     "max_virus_score": float, "chunks": int, "virus_probability": float}):
        if "virus_probability" in batch:
            probabilities.append(batch["virus_probability"])
        _count(result.labels, batch["label"])
        if "confidence" in batch:
            _count(result.confidence, batch["confidence"])
        share = batch["fraction_viral"]
        result.share_hist += np.histogram(share[~np.isnan(share)], SHARE_BINS)[0]
        keys = np.column_stack([batch["label"] == "virus", np.nan_to_num(batch["max_virus_score"], nan=-1.0),
                                np.nan_to_num(share, nan=-1.0)])
        best.add(keys, result.sequences)
        chunk_counts.append(batch["chunks"])
        result.sequences += len(keys)
    rows = fetch_rows(path, best.rows.tolist())
    result.top = [rows[i] for i in best.rows.tolist()]
    # chunks.tsv lists every chunk of every sequence in the order of contigs.tsv
    first = np.concatenate([[0], np.cumsum(np.concatenate(chunk_counts or [np.zeros(0, np.int64)]))])
    result.first_chunk = {row["sequence_id"]: int(first[i]) for i, row in zip(best.rows.tolist(), result.top)}
    if probabilities:
        p = np.concatenate(probabilities)
        result.probabilities = np.sort(p[~np.isnan(p)])[::-1]
    return result


@dataclass
class Calibrated:
    """The calibration behind a run's probabilities (run.json `calls.calibration`)."""

    path: str
    sha256: str
    bins: dict | None  # level -> out-of-fold reliability bins; None when the file moved or changed
    max_fdr: float  # call.max_fdr (0: the calls follow the call.* rules)


def read_calibrated(run: dict) -> Calibrated | None:
    """The run's calibration record, with the reliability bins of its file while that file is
    still at its path with its checksum; None for a run without a calibration."""
    from vnp.support.paths import file_sha256

    calls = run.get("calls", {})
    record = calls.get("calibration")
    if not isinstance(record, dict):
        return None
    path, bins = Path(record.get("path", "")), None
    if path.is_file() and file_sha256(path) == record.get("sha256"):
        bins = {level: json.loads(path.read_text())[level]["out_of_fold"]["bins"] for level in ("sequence", "chunk")}
    return Calibrated(record.get("path", "?"), record.get("sha256", "?"), bins,
                      calls.get("call", {}).get("max_fdr") or 0)


@dataclass
class Chunks:
    chunks: int = 0
    without_frames: int = 0
    score_hist: dict[str, np.ndarray] = field(default_factory=dict)  # chunk label -> counts
    tracks: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # sequence -> start, end, score


def read_chunk_table(path: Path, track_rows: dict[str, range]) -> Chunks:
    """Histogram of chunk virus scores by chunk label, and the chunks (rows) of the sequences to plot."""
    result = Chunks()
    table_header(path, ("sequence_id", "start", "end", "max_score2", "label"))
    for batch in read_columns(path, {"max_score2": float, "label": str}):
        score = batch["max_score2"]
        result.chunks += len(score)
        result.without_frames += int(np.isnan(score).sum())
        scored = ~np.isnan(score)
        labels = batch["label"][scored]
        for label in _values(labels, result.score_hist):
            counts = np.histogram(score[scored][labels == label], SCORE_BINS)[0]
            result.score_hist[label] = result.score_hist.get(label, 0) + counts
    rows = fetch_rows(path, (i for span in track_rows.values() for i in span))
    for rid, span in track_rows.items():
        mine = [rows.get(i, {}) for i in span]
        stray = next((i for i, row in zip(span, mine) if row.get("sequence_id") != rid), None)
        if stray is not None:
            raise InputError(f"{path}: row {stray + 2} is not a chunk of {rid!r}: chunks.tsv does not follow "
                             "contigs.tsv")
        result.tracks[rid] = {"start": np.array([int(r["start"]) for r in mine]),
                              "end": np.array([int(r["end"]) for r in mine]),
                              "score": np.array([number(r["max_score2"]) for r in mine])}
    return result


@dataclass
class RegionTable:
    regions: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    top: list[dict[str, str]] = field(default_factory=list)
    of_tracks: dict[str, list[tuple[int, int, str]]] = field(default_factory=dict)


def read_regions(path: Path, track_ids: list[str], top: int) -> RegionTable:
    result = RegionTable(of_tracks={rid: [] for rid in track_ids})
    best = Top(top)
    wanted = np.array(track_ids, dtype=str)
    table_header(path, ("sequence_id", "start", "end", "length", "mean_virus_score"))
    for batch in read_columns(path, {"sequence_id": str, "start": int, "end": int, "length": float,
                                     "mean_virus_score": float, "kind": str}):
        kinds = batch.get("kind", np.full(len(batch["sequence_id"]), ""))
        _count(result.kinds, kinds)
        best.add(np.column_stack([np.nan_to_num(batch["mean_virus_score"], nan=-1.0), batch["length"]]),
                 result.regions)
        mine = np.isin(batch["sequence_id"], wanted)
        for rid, start, end, kind in zip(batch["sequence_id"][mine].tolist(), batch["start"][mine].tolist(),
                                         batch["end"][mine].tolist(), kinds[mine].tolist()):
            result.of_tracks[rid].append((int(start), int(end), kind))
        result.regions += len(kinds)
    rows = fetch_rows(path, best.rows.tolist())
    result.top = [rows[i] for i in best.rows.tolist()]
    return result


def read_summary(path: Path) -> list[dict[str, str]]:
    """summary.tsv's rows (one per input and a total: small), header name -> value."""
    header = table_header(path, ())
    with open_table(path) as fh:
        fh.readline()
        return [_row(header, line) for line in _next_lines(fh, None, path, 0)]


def settings_changed(path: Path) -> list[tuple[str, str, str]]:
    """(key, value, default) of every setting in OUT/config.yaml that differs from vnp's default."""
    from omegaconf import OmegaConf

    from vnp.support.config import PredictConfig

    def flat(tree: dict, prefix: str = "") -> dict[str, object]:
        items = {}
        for key, value in tree.items():
            if isinstance(value, dict):
                items.update(flat(value, f"{prefix}{key}."))
            else:
                items[prefix + str(key)] = value
        return items

    try:
        used = flat(OmegaConf.to_container(OmegaConf.load(path)) or {})
    except Exception as err:  # YAML syntax (PyYAML) or OmegaConf errors alike
        raise InputError(f"{path}: not a vnp configuration ({str(err).splitlines()[0]})") from None
    defaults = flat(OmegaConf.to_container(OmegaConf.structured(PredictConfig)))
    return [(key, _setting(value), _setting(defaults[key]) if key in defaults else "(not a setting of this vnp)")
            for key, value in used.items() if key not in defaults or defaults[key] != value]


def _setting(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else repr(value) if value == "" else str(value)


@dataclass
class CallRules:
    """The call settings in run.json's "calls" (`call.min_score`, `call.min_fraction`). Without them
    (older runs) the defaults of `vnp.support.config.CallConfig` hold, the original's rules: a chunk
    is viral when its highest virus score is at least its highest other score, a sequence when at
    least half of its chunks with frames are."""

    min_score: float
    min_fraction: float
    recorded: bool  # whether run.json records them


def call_rules(run: dict) -> CallRules:
    from vnp.support.config import CallConfig

    default = CallConfig()
    calls = run.get("calls")
    call = calls.get("call") if isinstance(calls, dict) else None
    if not isinstance(call, dict):
        return CallRules(default.min_score, default.min_fraction, False)
    return CallRules(float(call.get("min_score", default.min_score)),
                     float(call.get("min_fraction", default.min_fraction)), True)


def _is_number(text: str) -> bool:
    try:
        float(text)
        return text.strip() != ""
    except ValueError:
        return False


@dataclass
class Report:
    """Everything the page shows, read from OUT."""

    out: Path
    run: dict
    top: int
    contigs: Contigs | None
    chunks: Chunks | None
    regions: RegionTable | None
    summary: list[dict[str, str]] | None
    changed: list[tuple[str, str, str]] | None
    rules: CallRules
    unfinished: str | None = None  # OUT's progress belongs to a later run, not yet finished
    calibrated: Calibrated | None = None

    def summary_shown(self) -> list[dict[str, str]] | None:
        """summary.tsv's rows: the first TABLE_ROWS inputs and the total row."""
        if not self.summary or len(self.summary) <= TABLE_ROWS + 1:
            return self.summary
        return self.summary[:TABLE_ROWS] + self.summary[-1:]

    def data(self) -> dict:
        """The numbers shown, as a JSON block (for programs and tests)."""
        counts = self.run.get("counts", {})
        return {
            "run": {key: self.run.get(key) for key in ("vnp", "world_size", "launcher", "device", "precision",
                                                      "chunk_length", "work_units", "resumed_units",
                                                      "rejected_progress_parts")},
            "run_counts": counts,
            "contigs": None if self.contigs is None else {
                "sequences": self.contigs.sequences, "labels": self.contigs.labels,
                "confidence": self.contigs.confidence,
                "share_histogram": self.contigs.share_hist.tolist(),
                "top": [r["sequence_id"] for r in self.contigs.top]},
            "chunks": None if self.chunks is None else {
                "chunks": self.chunks.chunks, "without_frames": self.chunks.without_frames,
                "score_histogram": {k: v.tolist() for k, v in self.chunks.score_hist.items()}},
            "regions": None if self.regions is None else {
                "regions": self.regions.regions, "kinds": self.regions.kinds,
                "top": [r.get("region_id", "") for r in self.regions.top]},
            "summary": self.summary_shown(),
            "call": asdict(self.rules),
            "tracks": list(self.chunks.tracks) if self.chunks else [],
        }


NUMBER = (int, float)


# The types of the run.json entries the report reads (a dict: the keys it reads, where present; a
# list: each element); other entries are shown as text.
RUN_SHAPE = {
    "models": {}, "counts": {"frames": NUMBER}, "calls": {"call": {"min_score": NUMBER, "min_fraction": NUMBER}},
    "inputs": [{"size": int}], "progress": [{"t_s": NUMBER, "frames": NUMBER, "chunks": NUMBER}],
    "timings_s": {"total_s": NUMBER, "loop_s": NUMBER, "embed_loop_s": NUMBER,
                  "per_rank": [{"rank": int, "busy_s": NUMBER, "wait_s": NUMBER, "loop_s": NUMBER,
                                "frames": NUMBER}]},
    "work_units": int, "resumed_units": int, "rejected_progress_parts": int, "world_size": int,
    "chunk_length": int,
}


def check_shape(value: object, shape: object, path: Path, key: str) -> None:
    """InputError naming the first entry of `value` (at `key`) that is not of the type `shape` says."""
    if isinstance(shape, dict):
        kind, ok = "an object", isinstance(value, dict)
    elif isinstance(shape, list):
        kind, ok = "a list", isinstance(value, list)
    else:
        kind = "an integer" if shape is int else "a number"
        ok = isinstance(value, shape) and not isinstance(value, bool)
    if not ok:
        raise InputError(f"{path}: {key} must be {kind}, not {json.dumps(value)[:40]} (a damaged or edited run.json?)")
    if isinstance(shape, dict):
        for name, inner in shape.items():
            if name in value:
                check_shape(value[name], inner, path, f"{key}.{name}" if key else name)
    elif isinstance(shape, list):
        for i, element in enumerate(value):
            check_shape(element, shape[0], path, f"{key}[{i}]")


def read_run_json(path: Path) -> dict:
    """OUT/run.json, checked: UTF-8 JSON, an object, the entries the report reads of their types."""
    try:
        run = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: not UTF-8 text (at byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON ({err.msg}, line {err.lineno})") from None
    except OSError as err:
        raise InputError(f"{path}: cannot read ({err.strerror})") from None
    if not isinstance(run, dict):
        raise InputError(f"{path}: not a vnp run record (a JSON object)")
    check_shape(run, RUN_SHAPE, path, "")
    return run


def load(out: Path, top: int = TOP_N, files=None) -> Report:
    """The report's data from OUT's files; with `files` (an `AtomicFiles` about to replace some of
    them) the new versions of those, so the report describes the files it is committed with."""
    at = files.current if files is not None else (lambda path: path)
    folder = RunFolder(out)
    run_json = at(folder.run_json)
    if not run_json.is_file():
        raise InputError(f"{out}: no run.json (not the output folder of a finished vnp run)")
    run = read_run_json(run_json)
    if "vnp" not in run:
        raise InputError(f"{folder.run_json}: not a vnp run record (a JSON object with a \"vnp\" version); "
                         "vnp writes a report only into the output folder of one of its runs")
    tables = {name: at(out / name) for name in ("contigs.tsv", "chunks.tsv", "regions.tsv", "summary.tsv")}
    present = {name: path if path.is_file() else None for name, path in tables.items()}
    contigs = read_contigs(present["contigs.tsv"], top) if present["contigs.tsv"] else None
    track_rows = {}  # sequence -> its rows in chunks.tsv, for the top sequences with scored chunks
    if contigs is not None:
        track_rows = {r["sequence_id"]: range(contigs.first_chunk[r["sequence_id"]],
                                              contigs.first_chunk[r["sequence_id"]] + int(r["chunks"]))
                      for r in contigs.top if _is_number(r.get("max_virus_score", "NA"))}
    track_ids = list(track_rows)
    chunks = read_chunk_table(present["chunks.tsv"], track_rows) if present["chunks.tsv"] else None
    regions = read_regions(present["regions.tsv"], track_ids, top) if present["regions.tsv"] else None
    summary = read_summary(present["summary.tsv"]) if present["summary.tsv"] else None
    config_yaml = at(folder.config_yaml)
    changed = settings_changed(config_yaml) if config_yaml.is_file() else None
    return Report(out, run, top, contigs, chunks, regions, summary, changed, call_rules(run), later_run(folder, run),
                  read_calibrated(run))


def later_run(folder: RunFolder, run: dict) -> str | None:
    """A warning when OUT's progress no longer belongs to the run run.json describes: a later
    `vnp predict` (force=true, or changed inputs) replaced it and has not finished (killed, failed)."""
    if not folder.work.is_dir():
        return None  # results copied without their work folder
    try:
        record = folder.read_run_record()
    except (OSError, ValueError):
        record = None
    if isinstance(record, dict) and record.get("run_id") == run.get("run_id"):
        return None
    return (f"{folder.root} now holds an unfinished run, started after the one shown here (which replaced this "
            "run's progress): these results stay until it finishes; run its vnp predict command again to finish it.")
