"""`OUT/report.html`: one self-contained page about a finished run, with plots.

    vnp report OUT [--top 10]

Written by rank 0 at the end of `vnp predict` (and by `vnp call`), or on demand. It reads only
the files in OUT (run.json, config.yaml, contigs.tsv, chunks.tsv and, when the run has them,
summary.tsv and regions.tsv), by header name, so runs of older versions still get a report: a
missing file leaves a note in its section instead of a plot, and columns that not every version
writes (input, confidence, kind) are shown when present.

The page needs nothing but itself: plots are SVG images in `data:` URIs, styles are inline, there
is no script, and a Content-Security-Policy forbids the browser any other load, so it opens from a
shared filesystem or an e-mail attachment. Its numbers are also in a JSON block
(`<script type="application/json" id="vnp-report-data">`) for programs and tests.

Bounded for any run size: tables are streamed in batches into histograms and top-N lists, and only
the top N sequences get a score track (long ones binned to at most `TRACK_POINTS` points).
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import io
import itertools
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from vnp.errors import InputError
from vnp.plan import file_sha256
from vnp.plots import pyplot
from vnp.run_folder import RunFolder

TOP_N = 10
BATCH_ROWS = 200_000
SCORE_BINS = np.linspace(0.0, 1.0, 51)
SHARE_BINS = np.linspace(0.0, 1.0, 21)
TRACK_POINTS = 2000  # a score track's most points; longer sequences are binned (max per bin)
RATE_POINTS = 60  # the most points of the throughput curve
TABLE_ROWS = 200  # the most rows of a per-input table shown

# Colour-blind-safe (Okabe-Ito), the same meaning everywhere in the report.
COLOURS = {"virus": "#D55E00", "others": "#0072B2", "no_frames": "#999999", "filtered": "#CC79A7",
           "busy": "#009E73", "wait": "#E69F00", "other": "#BBBBBB", "line": "#333333"}
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

CONTIG_SHOWN = ("sequence_id", "input", "length", "chunks", "viral_chunks", "chunks_without_frames",
                "fraction_viral", "max_virus_score", "mean_virus_score", "label", "confidence")
REGION_SHOWN = ("sequence_id", "region_id", "start", "end", "length", "chunks", "mean_virus_score",
                "max_virus_score", "kind")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT", help="output folder of a finished vnp predict run")
    parser.add_argument("--top", type=int, default=TOP_N, help=f"sequences and regions listed and plotted "
                        f"(default {TOP_N})")


def run(args: argparse.Namespace) -> int:
    try:
        if args.top < 1:
            raise InputError(f"--top must be at least 1, got {args.top}")
        path = write_report(Path(args.out), top=args.top)
    except InputError as err:
        print(f"vnp: error: {err}", file=sys.stderr)
        return 2
    print(f"vnp: report in {path}")
    return 0


# ---------------------------------------------------------------- reading OUT


def table_header(path: Path, required: tuple[str, ...]) -> list[str]:
    """The column names of a table; InputError when one of `required` is not among them."""
    with open(path) as fh:
        header = fh.readline().rstrip("\n").split("\t")
    missing = [name for name in required if name not in header]
    if missing:
        raise InputError(f"{path}: no column {missing[0]!r} in its header")
    return header


def number(text: str) -> float:
    """A table's number; NA (or empty) is NaN."""
    return np.nan if text in ("NA", "") else float(text)


def read_columns(path: Path, names: dict[str, type], batch_rows: int = BATCH_ROWS) -> Iterator[dict[str, np.ndarray]]:
    """Those of the named columns that a tab-separated table has, in batches of rows: each as
    float (NA is NaN), int or str, as `names` says.

    numpy's C parser splits the lines and parses the numbers (a csv loop in Python is several times
    slower on millions of rows), and only the named columns are kept, so memory stays at one batch."""
    with open(path) as fh:
        header = fh.readline().rstrip("\n").split("\t")
        present = [name for name in names if name in header]
        usecols = [header.index(name) for name in present]
        # one parse per batch: a record of the columns (str as Python objects, of any length)
        dtype = [(name, {float: np.float64, int: np.int64, str: object}[names[name]]) for name in present]
        converters = {header.index(name): number for name in present if names[name] is float}
        first = 0
        while lines := list(itertools.islice(fh, batch_rows)):
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
    with open(path) as fh:
        header = fh.readline().rstrip("\n").split("\t")
        for i, line in enumerate(fh):
            if len(found) == len(wanted):
                break
            if i in wanted:
                found[i] = dict(zip(header, line.rstrip("\n").split("\t")))
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


def read_contigs(path: Path, top: int) -> Contigs:
    """Label counts, the histogram of viral chunk shares and the top sequences of contigs.tsv."""
    result = Contigs(columns=table_header(path, ("sequence_id", "length", "chunks", "fraction_viral",
                                                 "max_virus_score", "label")))
    best = Top(top)
    chunk_counts = []
    for batch in read_columns(path, {"label": str, "confidence": str, "fraction_viral": float,
                                     "max_virus_score": float, "chunks": int}):
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
    return result


@dataclass
class Chunks:
    chunks: int = 0
    without_frames: int = 0
    score_hist: dict[str, np.ndarray] = field(default_factory=dict)  # chunk label -> counts
    tracks: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # sequence -> start, end, score


def read_chunks(path: Path, track_rows: dict[str, range]) -> Chunks:
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
class Regions:
    regions: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    top: list[dict[str, str]] = field(default_factory=list)
    of_tracks: dict[str, list[tuple[int, int, str]]] = field(default_factory=dict)


def read_regions(path: Path, track_ids: list[str], top: int) -> Regions:
    result = Regions(of_tracks={rid: [] for rid in track_ids})
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
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))


def settings_changed(path: Path) -> list[tuple[str, str, str]]:
    """(key, value, default) of every setting in OUT/config.yaml that differs from vnp's default."""
    from omegaconf import OmegaConf

    from vnp.config import PredictConfig

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
    (older runs) the original's rules hold: a chunk is viral when its highest virus score is at least
    its highest other score, a sequence when at least half of its chunks with frames are."""

    min_score: float = 0.0
    min_fraction: float = 0.5
    recorded: bool = False


def call_rules(run: dict) -> CallRules:
    calls = run.get("calls")
    call = calls.get("call") if isinstance(calls, dict) else None
    if not isinstance(call, dict):
        return CallRules()
    return CallRules(float(call.get("min_score", 0.0)), float(call.get("min_fraction", 0.5)), True)


def _score_lines(ax, rules: CallRules, vertical: bool) -> None:
    """0.5 (virus = others for a chunk of one frame) dashed; call.min_score dotted when it is above 0."""
    line = ax.axvline if vertical else ax.axhline
    line(0.5, color=COLOURS["line"], linestyle="--", linewidth=1.0, label="0.5 (one frame: virus = others)")
    if rules.min_score > 0:
        line(rules.min_score, color=COLOURS["line"], linestyle=":", linewidth=1.4,
             label=f"call.min_score {rules.min_score:g}")


# ---------------------------------------------------------------- plots


def _pyplot():
    """matplotlib with the report's style, imported only when a report is written."""
    plt = pyplot()
    plt.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "vnp", "font.size": 10,
                         "font.family": "sans-serif", "axes.spines.top": False, "axes.spines.right": False,
                         "axes.titlesize": 11, "axes.titleweight": "bold", "figure.dpi": 100})
    return plt


def _svg_uri(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    fig.clear()
    pyplot().close(fig)
    svg = buffer.getvalue()
    svg = svg[svg.index(b"<svg"):]  # no XML declaration or DOCTYPE (an external DTD reference)
    return "data:image/svg+xml;base64," + base64.b64encode(svg).decode("ascii")


def plot_labels(plt, labels: dict[str, int]) -> str:
    names = sorted(labels, key=lambda k: -labels[k])
    fig, ax = plt.subplots(figsize=(6, 0.5 + 0.45 * len(names)))
    bars = ax.barh(names, [labels[n] for n in names], color=[COLOURS.get(n, "#56B4E9") for n in names])
    ax.bar_label(bars, labels=[f"{labels[n]:,}" for n in names], padding=3)
    ax.invert_yaxis()
    ax.set_xlabel("sequences")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_title("Sequences by label")
    ax.margins(x=0.15)
    return _svg_uri(fig)


def plot_scores(plt, hist: dict[str, np.ndarray], rules: CallRules) -> str:
    fig, ax = plt.subplots(figsize=(6, 3.4))
    widths = np.diff(SCORE_BINS)
    bottom = np.zeros(len(widths))
    for label in sorted(hist):
        ax.bar(SCORE_BINS[:-1], hist[label], widths, bottom=bottom, align="edge",
               color=COLOURS.get(label, "#56B4E9"), label=f"{label} chunks", edgecolor="white", linewidth=0.3)
        bottom = bottom + hist[label]
    _score_lines(ax, rules, vertical=True)
    ax.set_xlim(0, 1)
    ax.set_xlabel("chunk virus score (highest P(virus) of the chunk's frames)")
    ax.set_ylabel("chunks")
    ax.yaxis.get_major_locator().set_params(integer=True)
    if bottom.max() > 0 and bottom.max() / max(1, np.median(bottom[bottom > 0])) > 100:
        ax.set_yscale("log")
        ax.set_ylabel("chunks (log scale)")
    ax.legend(frameon=False, fontsize=8, loc="best")
    ax.set_title("Chunk virus scores", loc="left")
    return _svg_uri(fig)


def plot_share(plt, hist: np.ndarray, rules: CallRules) -> str:
    fig, ax = plt.subplots(figsize=(6, 3.4))
    colours = [COLOURS["virus"] if low >= rules.min_fraction else COLOURS["others"] for low in SHARE_BINS[:-1]]
    ax.bar(SHARE_BINS[:-1] * 100, hist, np.diff(SHARE_BINS) * 100, align="edge", color=colours,
           edgecolor="white", linewidth=0.5)
    ax.axvline(rules.min_fraction * 100, color=COLOURS["line"], linestyle="--", linewidth=1.0,
               label=f"call.min_fraction {rules.min_fraction:g}" if rules.recorded else "half of its chunks")
    ax.legend(frameon=False, fontsize=8, loc="best")
    ax.set_xlim(0, 100)
    ax.set_xlabel("viral chunks of the sequence (% of its chunks with frames)")
    ax.set_ylabel("sequences")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_title("Share of viral chunks per sequence", loc="left")
    return _svg_uri(fig)


def track_points(start: np.ndarray, end: np.ndarray, score: np.ndarray, limit: int = TRACK_POINTS):
    """(x midpoints, scores, (from, to) spans in 0-based bp) along a sequence; chunks without
    frames are NaN (a gap in the line).

    Past `limit` chunks, the sequence is cut into `limit` equal bins holding their highest score
    (NaN where a bin holds only chunks without frames)."""
    mid = (start - 1 + end) / 2.0
    if len(mid) <= limit:
        return mid, score, (start - 1.0, end.astype(float))
    edges = np.linspace(start.min() - 1, end.max(), limit + 1)
    which = np.clip(np.searchsorted(edges, mid, side="right") - 1, 0, limit - 1)
    best = np.full(limit, -np.inf)
    np.maximum.at(best, which, np.nan_to_num(score, nan=-np.inf))
    best[np.isinf(best)] = np.nan
    return (edges[:-1] + edges[1:]) / 2, best, (edges[:-1], edges[1:])


def plot_track(plt, rid: str, length: int, track: dict[str, np.ndarray], regions: list[tuple[int, int, str]],
               rules: CallRules) -> str:
    fig, ax = plt.subplots(figsize=(6, 2.3))
    scale, unit = (1e3, "kb") if length >= 10_000 else (1.0, "bp")
    if regions:  # one collection, however many regions
        ax.broken_barh([((start - 1) / scale, (end - start + 1) / scale) for start, end, _ in regions], (-0.05, 1.1),
                       color=COLOURS["virus"], alpha=0.12, linewidth=0, label="called region")
    x, y, (lo, hi) = track_points(track["start"], track["end"], track["score"])
    empty = np.isnan(y)
    if len(x) <= 60:  # few chunks: each chunk's span as a bar at its score, plus its midpoint
        ax.hlines(y[~empty], lo[~empty] / scale, hi[~empty] / scale, color=COLOURS["others"], alpha=0.3, linewidth=3)
    ax.plot(x / scale, y, color=COLOURS["others"], linewidth=1.2, marker="o" if len(x) <= 200 else None,
            markersize=3, label="chunk virus score")
    if empty.any():  # a gap in the line; the chunk's (or bin's) span drawn grey along the bottom
        ax.hlines(np.zeros(int(empty.sum())), lo[empty] / scale, hi[empty] / scale, color=COLOURS["no_frames"],
                  linewidth=5, label="chunk without frames")
    _score_lines(ax, rules, vertical=False)
    ax.legend(frameon=False, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.32), ncols=3)
    ax.set_xlim(0, length / scale)
    ax.set_ylim(-0.05, 1.05)
    ax.set_ylabel("virus score")
    ax.set_xlabel(f"position ({unit})")
    ax.set_title(rid if len(rid) <= 60 else rid[:59] + "…", loc="left", fontsize=10)
    return _svg_uri(fig)


def plot_progress(plt, samples: list[dict]) -> str | None:
    t = np.array([s.get("t_s", np.nan) for s in samples], dtype=float)
    frames = np.array([s.get("frames", np.nan) for s in samples], dtype=float)
    chunks = np.array([s.get("chunks", np.nan) for s in samples], dtype=float)
    if len(t) < 2:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3))
    left.plot(t, chunks, color=COLOURS["others"], label="chunks")
    left.plot(t, frames, color=COLOURS["virus"], label="frames")
    left.set_xlabel("time since start (s)")
    left.set_ylabel("done")
    left.set_title("Progress")
    left.legend(frameon=False)
    every = max(1, len(t) // RATE_POINTS)  # a rate over several samples: one sample's step is noise
    t_r, frames_r = t[::every], frames[::every]
    dt = np.diff(t_r)
    rate = np.divide(np.diff(frames_r), dt, out=np.full(len(dt), np.nan), where=dt > 0)
    right.step(t_r[1:], rate, where="pre", color=COLOURS["busy"])
    right.set_xlabel("time since start (s)")
    right.set_ylabel("frames/s")
    right.set_title("Throughput (all ranks)")
    right.set_ylim(bottom=0)
    fig.tight_layout()
    return _svg_uri(fig)


def rank_parts(row: dict) -> list[tuple[str, float]]:
    """A rank's time split for the bar chart: busy vs waiting when recorded, else its stages."""
    if "busy_s" in row:
        busy, wait = float(row["busy_s"]), float(row.get("wait_s", 0.0))
        parts = [("busy (model forwards)", busy), ("waiting on exchange", wait)]
        if "loop_s" in row:
            parts.append(("other", max(0.0, float(row["loop_s"]) - busy - wait)))
        return parts
    return [(key[:-2], float(value)) for key, value in row.items()
            if key.endswith("_s") and key != "loop_s" and isinstance(value, (int, float))]


def plot_ranks(plt, per_rank: list[dict]) -> str | None:
    rows = [(int(r.get("rank", i)), rank_parts(r)) for i, r in enumerate(per_rank)]
    names = list(dict.fromkeys(name for _, parts in rows for name, _ in parts))
    if not names:
        return None
    palette = {"busy (model forwards)": COLOURS["busy"], "waiting on exchange": COLOURS["wait"],
               "other": COLOURS["other"]}
    spare = iter(["#56B4E9", "#009E73", "#E69F00", "#CC79A7", "#F0E442", "#0072B2", "#D55E00", "#999999"])
    fig, ax = plt.subplots(figsize=(8, 0.9 + 0.4 * len(rows)))
    left = np.zeros(len(rows))
    labels = [f"rank {rank}" for rank, _ in rows]
    for name in names:
        values = np.array([dict(parts).get(name, 0.0) for _, parts in rows])
        ax.barh(labels, values, left=left, label=name, color=palette.get(name) or next(spare, "#999999"))
        left += values
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    ax.set_title("Time per rank", loc="left")
    ax.legend(frameon=False, fontsize=8, ncols=min(4, len(names)), loc="lower right", bbox_to_anchor=(1.0, 1.0))
    return _svg_uri(fig)


# ---------------------------------------------------------------- HTML

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0;color:#222;
 background:#f6f7f9;line-height:1.45}
main{max-width:1100px;margin:0 auto;padding:1.5rem 2rem 3rem}
header{background:#1f3a5f;color:#fff;padding:1.2rem 2rem}
header h1{margin:0;font-size:1.5rem} header p{margin:.2rem 0 0;opacity:.85}
section{background:#fff;border:1px solid #e2e5ea;border-radius:8px;padding:1rem 1.4rem;margin:1.2rem 0}
h2{font-size:1.2rem;margin:.2rem 0 .8rem;color:#1f3a5f} h3{font-size:1rem;margin:1rem 0 .4rem}
.cards{display:flex;flex-wrap:wrap;gap:.8rem;margin-top:1.2rem}
.card{background:#fff;border:1px solid #e2e5ea;border-radius:8px;padding:.7rem 1.1rem;min-width:8.5rem}
.card b{display:block;font-size:1.45rem;color:#1f3a5f} .card span{color:#555;font-size:.85rem}
table{border-collapse:collapse;font-size:.88rem;margin:.3rem 0 .8rem}
th,td{border-bottom:1px solid #e6e8eb;padding:.25rem .7rem;text-align:left;vertical-align:top}
th{background:#f0f2f5} td.num{text-align:right;font-variant-numeric:tabular-nums}
code,.mono{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:.82rem;word-break:break-all}
img{height:auto;display:block;margin:.4rem 0} img.wide{width:100%} img.plot{width:100%;max-width:760px}
.note{color:#555;font-style:italic} .warn{background:#fff4e5;border-left:4px solid #E69F00;padding:.5rem .8rem}
.pill{display:inline-block;border-radius:9px;padding:0 .5rem;color:#fff;font-size:.8rem}
.grid{display:flex;flex-wrap:wrap;gap:1rem} .grid>div{flex:1 1 480px;min-width:0}
.scroll{overflow-x:auto;max-width:100%}
"""


def esc(value: object) -> str:
    return html.escape(str(value))


def _is_number(text: str) -> bool:
    try:
        float(text)
        return text.strip() != ""
    except ValueError:
        return False


def table(header: list[str], rows: list[list[object]], data_key: str | None = None, align: bool = True) -> str:
    """An HTML table (numeric cells right-aligned when `align`); `data_key` names it, and each cell's
    `data-col` its column, for programs."""
    head = "".join(f"<th>{esc(h.replace('_', ' '))}</th>" for h in header)
    numeric = [align and any(_is_number(str(v)) for v in column)
               and all(_is_number(str(v)) or v == "NA" for v in column) for column in zip(*rows)]
    body = []
    for row in rows:
        cells = []
        for name, value, right in zip(header, row, numeric):
            text = f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)
            cls = ' class="num"' if right else ""
            if name == "label" and value in COLOURS:
                text = f'<span class="pill" style="background:{COLOURS[value]}">{esc(value)}</span>'
            else:
                text = esc(text)
            cells.append(f'<td{cls} data-col="{esc(name)}">{text}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    key = f' data-table="{esc(data_key)}"' if data_key else ""
    return f'<div class="scroll"><table{key}><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def figure(uri: str, alt: str, wide: bool = False) -> str:
    kind = "wide" if wide else "plot"
    return f'<img class="{kind}" alt="{esc(alt)}" src="{uri}">'


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return str(n)


def _seconds(value: float | None) -> str:
    if value is None:
        return "NA"
    return f"{value:,.1f} s" if value < 120 else f"{value / 60:,.1f} min"


@dataclass
class Report:
    """Everything the page shows, read from OUT."""

    out: Path
    run: dict
    top: int
    contigs: Contigs | None
    chunks: Chunks | None
    regions: Regions | None
    summary: list[dict[str, str]] | None
    changed: list[tuple[str, str, str]] | None
    rules: CallRules

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


def load(out: Path, top: int = TOP_N) -> Report:
    folder = RunFolder(out)
    if not folder.run_json.is_file():
        raise InputError(f"{out}: no run.json (not the output folder of a finished vnp run)")
    try:
        run = json.loads(folder.run_json.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{folder.run_json}: not valid JSON ({err.msg}, line {err.lineno})") from None
    if not isinstance(run, dict):
        raise InputError(f"{folder.run_json}: not a vnp run record (a JSON object)")
    contigs = read_contigs(out / "contigs.tsv", top) if (out / "contigs.tsv").is_file() else None
    track_rows = {}  # sequence -> its rows in chunks.tsv, for the top sequences with scored chunks
    if contigs is not None:
        track_rows = {r["sequence_id"]: range(contigs.first_chunk[r["sequence_id"]],
                                              contigs.first_chunk[r["sequence_id"]] + int(r["chunks"]))
                      for r in contigs.top if _is_number(r.get("max_virus_score", "NA"))}
    track_ids = list(track_rows)
    chunks = read_chunks(out / "chunks.tsv", track_rows) if (out / "chunks.tsv").is_file() else None
    regions = read_regions(out / "regions.tsv", track_ids, top) if (out / "regions.tsv").is_file() else None
    summary = read_summary(out / "summary.tsv") if (out / "summary.tsv").is_file() else None
    changed = settings_changed(folder.config_yaml) if folder.config_yaml.is_file() else None
    return Report(out, run, top, contigs, chunks, regions, summary, changed, call_rules(run))


def write_report(out: Path, top: int = TOP_N) -> Path:
    """Write OUT/report.html from the files in OUT; returns its path."""
    out = Path(out)
    report = load(out, top)
    page = render(report)
    path = RunFolder(out).report_html
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path


def render(report: Report) -> str:
    plt = _pyplot()
    run = report.run
    title = f"vnp report: {report.out.resolve().name}"
    sections = [_section_run(report), _section_labels(report, plt), _section_scores(report, plt),
                _section_calibration(report, plt), _section_top(report), _section_tracks(report, plt),
                _section_performance(report, plt), _section_resume(report)]
    data = json.dumps(report.data(), separators=(",", ":")).replace("</", "<\\/")
    subtitle = (f"vnp {esc(run.get('vnp', '?'))} · pack {esc(run.get('models', {}).get('name', '?'))} · "
                f"{esc(run.get('world_size', '?'))} rank(s) on {esc(run.get('device', '?'))} · "
                f"written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>"
            f"<header><h1>{esc(title)}</h1><p>{subtitle}</p></header><main>{_cards(report)}"
            + "".join(sections)
            + f'</main><script type="application/json" id="vnp-report-data">{data}</script></body></html>\n')


def _cards(report: Report) -> str:
    counts = report.run.get("counts", {})
    items = [("sequences", counts.get("sequences")),
             ("viral sequences", counts.get("viral_sequences")),
             ("regions", report.regions.regions if report.regions else None),
             ("chunks", counts.get("chunks")), ("frames", counts.get("frames")),
             ("viral chunks", counts.get("viral_chunks"))]
    cards = [f'<div class="card" data-card="{esc(name)}"><b>{value:,}</b><span>{esc(name)}</span></div>'
             for name, value in items if isinstance(value, int)]
    total = report.run.get("timings_s", {}).get("total_s")
    if total is not None:
        cards.append(f'<div class="card" data-card="time"><b>{_seconds(total)}</b><span>total time</span></div>')
    return f'<div class="cards">{"".join(cards)}</div>'


def _section_run(report: Report) -> str:
    run = report.run
    models = run.get("models", {})
    facts = [("vnp / torch", f"{run.get('vnp', '?')} / {run.get('torch', '?')}"),
             ("model pack", models.get("name", "?")),
             ("pack fingerprint", models.get("fingerprint", "?")),
             ("chunk length", f"{run.get('chunk_length', '?')} bp"),
             ("world size", run.get("world_size", "?")), ("launcher", run.get("launcher", "?")),
             ("device", run.get("device", "?")), ("precision", run.get("precision", "?")),
             ("work units", run.get("work_units", "?"))]
    parts = ["<section><h2>Run</h2>", table(["item", "value"], [[k, v] for k, v in facts], "run", align=False)]
    inputs = run.get("inputs", [])
    parts.append("<h3>Inputs</h3>")
    parts.append(table(["input", "size", "records", "sha256"],
                       [[i.get("path", "?"), _size(int(i.get("size", 0))), i.get("records", "NA"),
                         i.get("sha256", "?")] for i in inputs[:TABLE_ROWS]], "inputs")
                 if inputs else note("run.json lists no inputs."))
    if len(inputs) > TABLE_ROWS:
        parts.append(note(f"… and {len(inputs) - TABLE_ROWS:,} more inputs (see run.json)."))
    parts.append("<h3>Per input</h3>")
    if report.summary:
        header = list(report.summary[0])
        parts.append(table(header, [[r[h] for h in header] for r in report.summary_shown()], "summary"))
        if len(report.summary) > TABLE_ROWS + 1:
            parts.append(note(f"… {len(report.summary) - TABLE_ROWS - 1:,} more inputs in summary.tsv."))
    else:
        parts.append(note("No summary.tsv in this output folder (written by vnp versions with calls and "
                          "regions): see the inputs above for the records per input."))
    parts.append("<h3>Settings that differ from the defaults</h3>")
    if report.changed is None:
        parts.append(note("No config.yaml in this output folder."))
    elif report.changed:
        parts.append(table(["key", "value", "default"], [list(c) for c in report.changed], "settings"))
    else:
        parts.append(note("None: every setting has its default value."))
    return "".join(parts) + "</section>"


def _section_labels(report: Report, plt) -> str:
    parts = ["<section><h2>Counts and labels</h2>"]
    counts = report.run.get("counts", {})
    shown = [[k, v] for k, v in counts.items() if isinstance(v, int)]
    if report.contigs is None:
        parts.append(note("No contigs.tsv in this output folder."))
    else:
        labels = report.contigs.labels
        grid = ['<div class="grid"><div>']
        grid.append(figure(plot_labels(plt, labels), "bar chart of sequences by label") if labels else
                    note("contigs.tsv has no rows."))
        grid.append("</div><div>")
        grid.append(table(["label", "sequences"], [[k, v] for k, v in sorted(labels.items(), key=lambda x: -x[1])],
                          "labels"))
        if report.contigs.confidence:
            grid.append(table(["confidence", "sequences"], sorted(report.contigs.confidence.items()), "confidence"))
        grid.append("</div></div>")
        parts.extend(grid)
    if shown:
        parts.append("<h3>Run counts (run.json)</h3>" + table(["count", "value"], shown, "counts"))
    return "".join(parts) + "</section>"


def _section_scores(report: Report, plt) -> str:
    parts = ["<section><h2>Scores</h2>"]
    rules = report.rules
    if rules.recorded:
        parts.append(f'<p>The calls of this run: a chunk is viral when its highest virus score is at least its '
                     f'highest other score (0.5 for a chunk of one frame: dashed) and at least call.min_score '
                     f'<b data-min-score="{rules.min_score}">{rules.min_score:g}</b>'
                     f'{" (dotted)" if rules.min_score > 0 else ""}; a sequence when at least call.min_fraction '
                     f'<b data-min-fraction="{rules.min_fraction}">{rules.min_fraction:g}</b> of its chunks with '
                     "frames are viral.</p>")
    else:
        parts.append(note("run.json records no call settings (an older vnp): the original's rules hold: a chunk "
                          "is viral when its highest virus score is at least its highest other score (0.5 for a "
                          "chunk of one frame: dashed), a sequence when at least half of its chunks with frames "
                          "are."))
    if report.chunks is None:
        parts.append(note("No chunks.tsv in this output folder."))
    elif report.chunks.score_hist:
        parts.append(note(f"{report.chunks.chunks - report.chunks.without_frames:,} chunks with frames; "
                          f"{report.chunks.without_frames:,} chunks without a stop-free frame are not shown."))
    else:
        parts.append(note("No chunk has a stop-free frame: there are no scores."))
    parts.append('<div class="grid">')
    if report.chunks is not None and report.chunks.score_hist:
        parts.append("<div>" + figure(plot_scores(plt, report.chunks.score_hist, report.rules),
                                      "histogram of chunk virus scores", wide=True) + "</div>")
    if report.contigs is not None and report.contigs.share_hist.sum():
        parts.append("<div>" + figure(plot_share(plt, report.contigs.share_hist, report.rules),
                                      "histogram of viral chunk share per sequence", wide=True) + "</div>")
    return "".join(parts) + "</div></section>"


def _section_calibration(report: Report, plt) -> str:
    """With a calibration (run.json `calls.calibration`): its file and checksum, the reliability
    diagram (out-of-fold, from the file), the histogram of sequence probabilities and the
    estimated FDR against the number of sequences called by decreasing probability, the cutoff
    marked. Nothing without one."""
    record = report.run.get("calls", {}).get("calibration")
    contigs = report.out / "contigs.tsv"
    if not isinstance(record, dict) or not contigs.is_file():
        return ""
    parts = ["<section><h2>Calibration</h2>", table(["item", "value"], [
        ["calibration file", record.get("path", "?")], ["sha256", record.get("sha256", "?")]], "calibration",
        align=False)]
    p, called = [], 0
    for batch in read_columns(contigs, {"virus_probability": float, "label": str}):
        p.append(batch.get("virus_probability", np.zeros(0)))
        called += int(np.sum(batch["label"] == "virus")) if "label" in batch else 0
    p = np.concatenate(p) if p else np.zeros(0)
    p = np.sort(p[~np.isnan(p)])[::-1]
    if not len(p):
        return "".join(parts) + note("contigs.tsv has no virus_probability.") + "</section>"
    bins = None
    path = Path(record.get("path", ""))
    if path.is_file() and file_sha256(path) == record.get("sha256"):
        bins = {level: json.loads(path.read_text())[level]["out_of_fold"]["bins"] for level in ("sequence", "chunk")}
    else:
        parts.append(note("The calibration file is no longer at that path with that checksum: no reliability "
                          "diagram."))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for level, rows in (bins or {}).items():
        axes[0].plot([r["mean_probability"] for r in rows], [r["virus_share"] for r in rows], marker="o",
                     label=f"{level}s", color=COLOURS["virus" if level == "sequence" else "others"])
    axes[0].plot([0, 1], [0, 1], color=COLOURS["line"], linestyle=":", linewidth=1.0, label="perfect")
    axes[0].set(xlabel="predicted P(virus) (out of fold)", ylabel="share virus", title="Reliability")
    axes[0].legend(frameon=False, fontsize=8)
    axes[1].hist(p, bins=SCORE_BINS, color=COLOURS["virus"])
    axes[1].set(xlabel="sequence virus_probability", ylabel="sequences", title="Probabilities")
    fdr = np.cumsum(1.0 - p) / np.arange(1, len(p) + 1)  # called by decreasing p
    step = max(1, len(p) // TRACK_POINTS)
    axes[2].plot(np.arange(1, len(p) + 1)[::step], fdr[::step], color=COLOURS["line"])
    axes[2].axvline(called, color=COLOURS["virus"], linestyle="--", label=f"called virus: {called:,}")
    max_fdr = report.run.get("calls", {}).get("call", {}).get("max_fdr") or 0
    if max_fdr:
        axes[2].axhline(max_fdr, color=COLOURS["others"], linestyle=":", label=f"call.max_fdr {max_fdr:g}")
    axes[2].set(xlabel="sequences called (by decreasing probability)", ylabel="estimated FDR",
                title="Estimated FDR")
    axes[2].legend(frameon=False, fontsize=8)
    how = (f"the largest set with estimated FDR <= call.max_fdr {max_fdr:g}; its estimated FDR is "
           f"{fdr[called - 1]:.4f}" if max_fdr and called else
           "by the call.* rules, not by probability (call.max_fdr picks the set from the curve)")
    parts.append(f'<p data-calibrated-called="{called}">{called:,} sequences called virus: {esc(how)}.</p>')
    parts.append(figure(_svg_uri(fig), "reliability diagram, probability histogram and estimated FDR", wide=True))
    return "".join(parts) + "</section>"


def _section_top(report: Report) -> str:
    parts = [f"<section><h2>Top {report.top} sequences</h2>"]
    if report.contigs is None:
        parts.append(note("No contigs.tsv in this output folder."))
    else:
        rows = report.contigs.top
        viral = report.contigs.labels.get("virus", 0)
        parts.append(note(f"{viral:,} sequences are labelled virus; ranked by label virus first, then highest "
                          "chunk virus score, then share of viral chunks."))
        header = [c for c in CONTIG_SHOWN if c in report.contigs.columns]
        parts.append(table(header, [[r[h] for h in header] for r in rows], "top_sequences"))
    parts.append(f"<h3>Top {report.top} regions</h3>")
    if report.regions is None:
        parts.append(note("No regions.tsv in this output folder (written by vnp versions with calls and regions)."))
    elif report.regions.regions == 0:
        parts.append(note("No regions were called."))
    else:
        rows = report.regions.top
        header = [c for c in REGION_SHOWN if c in rows[0]]
        kinds = ", ".join(f"{n:,} {k}" for k, n in sorted(report.regions.kinds.items()))
        parts.append(note(f"{report.regions.regions:,} regions ({kinds}); ranked by mean virus score, then length."))
        parts.append(table(header, [[r[h] for h in header] for r in rows], "top_regions"))
    return "".join(parts) + "</section>"


def _section_tracks(report: Report, plt) -> str:
    parts = ["<section><h2>Score tracks</h2>"]
    if report.chunks is None or not report.chunks.tracks:
        parts.append(note("No sequence with scored chunks to plot."))
        return "".join(parts) + "</section>"
    parts.append(note("Chunk virus score along each of the top sequences (line through the chunk midpoints, "
                      "bars over each chunk's span); a gap in the line and a grey bar along the bottom: chunks "
                      "without a stop-free frame; "
                      "shaded: called regions; dashed: 0.5; dotted: call.min_score."))
    lengths = {r["sequence_id"]: int(r.get("length", 0) or 0) for r in report.contigs.top}
    parts.append('<div class="grid">')
    for rid, track in report.chunks.tracks.items():
        regions = report.regions.of_tracks.get(rid, []) if report.regions else []
        length = lengths.get(rid) or int(track["end"].max())
        uri = plot_track(plt, rid, length, track, regions, report.rules)
        parts.append(f'<div data-track="{esc(rid)}">{figure(uri, f"score track of {rid}", wide=True)}</div>')
    return "".join(parts) + "</div></section>"


def _section_performance(report: Report, plt) -> str:
    timings = report.run.get("timings_s", {})
    per_rank = timings.get("per_rank", [])
    parts = ["<section><h2>Performance</h2>"]
    counts = report.run.get("counts", {})
    stages = [[k, v] for k, v in timings.items() if k != "per_rank" and isinstance(v, (int, float))]
    loop = timings.get("embed_loop_s") or timings.get("loop_s")
    if loop and counts.get("frames"):
        stages.append(["frames/s (embedding loop)", f"{counts['frames'] / loop:,.1f}"])
    if stages:
        parts.append(table(["stage", "seconds"], stages, "timings"))
    progress = report.run.get("progress")
    uri = plot_progress(plt, progress) if progress else None
    parts.append(figure(uri, "progress and throughput over time", wide=True) if uri else
                 note("run.json has no progress samples (recorded by newer vnp versions)."))
    if per_rank:
        uri = plot_ranks(plt, per_rank)
        if uri:
            parts.append(figure(uri, "time per rank"))
        rows = [_with_rate(r) for r in per_rank]
        header = list(dict.fromkeys(k for r in rows for k in r))
        parts.append("<h3>Per rank (seconds; peak memory in MiB)</h3>")
        parts.append(table(header, [[r.get(h, "") for h in header] for r in rows], "per_rank"))
    else:
        parts.append(note("run.json has no per-rank timings."))
    return "".join(parts) + "</section>"


def _with_rate(row: dict) -> dict:
    """A rank's row plus its frames/s, when it records its frames."""
    seconds = row.get("loop_s") or row.get("busy_s")
    if isinstance(row.get("frames"), (int, float)) and seconds:
        return {**row, "frames_per_s": round(row["frames"] / seconds, 1)}
    return row


def _section_resume(report: Report) -> str:
    run = report.run
    resumed, rejected = run.get("resumed_units", 0), run.get("rejected_progress_parts", 0)
    units = run.get("work_units", 0)
    parts = ["<section><h2>Resume</h2>"]
    if resumed or rejected:
        parts.append(f'<p class="warn">This run resumed an interrupted one: <b data-resumed="{resumed}">{resumed:,}'
                     f'</b> of {units:,} work units were already done; <b data-rejected="{rejected}">{rejected:,}</b> '
                     "progress parts were rejected (unreadable or from another run) and redone.</p>")
    else:
        parts.append(f'<p data-resumed="0" data-rejected="0">A fresh run: no work unit was resumed and no progress '
                     f"part was rejected ({units} work unit{'' if units == 1 else 's'}).</p>")
    return "".join(parts) + "</section>"


def main(argv: list[str] | None = None) -> int:
    from vnp.cli import module_main

    return module_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
