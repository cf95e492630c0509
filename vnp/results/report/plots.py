"""The report's plots: matplotlib (Agg) figures as SVG `data:` URIs, drawn from a loaded `Report`."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field, replace

import numpy as np

from vnp.results.calibration import running_fdr
from vnp.results.plots import pyplot
from vnp.results.report.data import SCORE_BINS, SHARE_BINS, Calibrated, CallRules, Report

TRACK_POINTS = 2000  # a score track's most points; longer sequences are binned (max per bin)


RATE_POINTS = 60  # the most points of the throughput curve


# Colour-blind-safe (Okabe-Ito), the same meaning everywhere in the report.
COLOURS = {"virus": "#D55E00", "others": "#0072B2", "no_frames": "#999999", "filtered": "#CC79A7",
           "busy": "#009E73", "wait": "#E69F00", "other": "#BBBBBB", "line": "#333333"}


def _score_lines(ax, rules: CallRules, vertical: bool) -> None:
    """0.5 dashed (where virus = others, but only for a chunk of one frame: with several, the highest
    others score may come from another frame); call.min_score dotted when it is above 0."""
    line = ax.axvline if vertical else ax.axhline
    line(0.5, color=COLOURS["line"], linestyle="--", linewidth=1.0,
         label="0.5: the cut for a one-frame chunk only")
    if rules.min_score > 0:
        line(rules.min_score, color=COLOURS["line"], linestyle=":", linewidth=1.4,
             label=f"call.min_score {rules.min_score:g}")


def _pyplot():
    """matplotlib with the report's style, imported only when a report is written."""
    plt = pyplot()
    plt.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "vnp", "font.size": 10,
                         "font.family": "sans-serif", "axes.spines.top": False, "axes.spines.right": False,
                         "axes.titlesize": 11, "axes.titleweight": "bold", "figure.dpi": 100})
    return plt


@dataclass(frozen=True)
class Layout:
    """A figure's size and the margins its axes leave for tick labels, axis labels, titles and
    legends, all in inches. Fixed margins instead of a tight bounding box at save time: that costs a
    second draw of the figure, and gives each score track a different plot area."""

    width: float
    height: float
    left: float = 0.85  # six-digit tick labels and the axis label
    right: float = 0.25
    top: float = 0.35
    bottom: float = 0.55
    gap: float = 0.0  # between panels side by side

    def figure(self, plt, panels: int = 1):
        fig, axes = plt.subplots(1, panels, figsize=(self.width, self.height))
        panel = (self.width - self.left - self.right - self.gap * (panels - 1)) / panels
        fig.subplots_adjust(left=self.left / self.width, right=1 - self.right / self.width,
                            bottom=self.bottom / self.height, top=1 - self.top / self.height,
                            wspace=self.gap / panel)
        return fig, axes

    def taller(self, inches: float) -> "Layout":
        """This layout with `inches` more plot height (a bar per row)."""
        return replace(self, height=self.height + inches)

    def below_axes(self, inches: float) -> tuple[float, float]:
        """The point `inches` under the middle of the axes' bottom edge, in axes coordinates (where
        a legend below the axes hangs from)."""
        return 0.5, -inches / (self.height - self.top - self.bottom)


LABELS_LAYOUT = Layout(6.0, 0.9, left=0.9, right=0.2)  # room for the label names; taller by the labels
SCORES_LAYOUT = Layout(6.0, 4.0, bottom=1.3)  # legend (a title, up to 3 rows) under the axis label
SHARE_LAYOUT = Layout(6.0, 3.1)
TRACK_LAYOUT = Layout(6.0, 2.9, left=0.75, bottom=0.95)  # legend (up to 2 rows) under the axis label
PROGRESS_LAYOUT = Layout(10.0, 3.0, gap=1.0)
RANKS_LAYOUT = Layout(8.0, 1.35, left=1.0, top=0.8)  # title and legend (up to 2 rows) above; taller by the ranks
CALIBRATION_LAYOUT = Layout(13.0, 3.6, gap=1.0)
TITLE_CHARS = 48  # a track's title (its sequence ID) that fits above the axes; the page gives it whole


def _close(fig) -> None:
    fig.clear()
    pyplot().close(fig)


def _svg_uri(fig, close: bool = True) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None})
    if close:
        _close(fig)
    svg = buffer.getvalue()
    svg = svg[svg.index(b"<svg"):]  # no XML declaration or DOCTYPE (an external DTD reference)
    return "data:image/svg+xml;base64," + base64.b64encode(svg).decode("ascii")


def plot_labels(plt, labels: dict[str, int]) -> str:
    names = sorted(labels, key=lambda k: -labels[k])
    fig, ax = LABELS_LAYOUT.taller(0.45 * len(names)).figure(plt)
    bars = ax.barh(names, [labels[n] for n in names], color=[COLOURS.get(n, "#56B4E9") for n in names])
    ax.bar_label(bars, labels=[f"{labels[n]:,}" for n in names], padding=3)
    ax.invert_yaxis()
    ax.set_xlabel("sequences")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_title("Sequences by label")
    ax.margins(x=0.15)
    return _svg_uri(fig)


def plot_scores(plt, hist: dict[str, np.ndarray], rules: CallRules) -> str:
    fig, ax = SCORES_LAYOUT.figure(plt)
    bottom = np.zeros(len(SCORE_BINS) - 1)
    for label in sorted(hist):  # stacked: one filled step outline per call (50 bars each would be 50 artists)
        ax.stairs(bottom + hist[label], SCORE_BINS, baseline=bottom, fill=True,
                  color=COLOURS.get(label, "#56B4E9"), label=f"called {label}")
        bottom = bottom + hist[label]
    _score_lines(ax, rules, vertical=True)
    ax.set_xlim(0, 1)
    ax.set_xlabel("chunk virus score: highest P(virus) over the chunk's frames")
    ax.set_ylabel("chunks")
    ax.yaxis.get_major_locator().set_params(integer=True)
    if bottom.max() > 0 and bottom.max() / max(1, np.median(bottom[bottom > 0])) > 100:
        ax.set_yscale("log")
        ax.set_ylabel("chunks (log scale)")
    ax.legend(frameon=False, fontsize=8, loc="upper center", bbox_to_anchor=SCORES_LAYOUT.below_axes(0.55), ncols=2,
              title="colour: the chunk's call (see the note above)", title_fontsize=8)
    ax.set_title("Chunk virus scores", loc="left")
    return _svg_uri(fig)


def plot_share(plt, hist: np.ndarray, rules: CallRules) -> str:
    fig, ax = SHARE_LAYOUT.figure(plt)
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


class TrackFigure:
    """One figure for every score track of a report: each track removes the previous track's
    artists and keeps the axes (their ticks and layout), so a track costs one draw, not a new figure."""

    def __init__(self, plt) -> None:
        self.fig, self.ax = TRACK_LAYOUT.figure(plt)
        self.ax.set_ylim(-0.05, 1.05)  # what every track shares is set once
        self.ax.set_yticks(np.linspace(0.0, 1.0, 6))
        self.ax.set_ylabel("virus score")

    def draw(self, rid: str, length: int, track: dict[str, np.ndarray], regions: list[tuple[int, int, str]],
             rules: CallRules) -> str:
        ax = self.ax
        for artist in [*ax.lines, *ax.collections, *ax.patches]:
            artist.remove()
        scale, unit = (1e3, "kb") if length >= 10_000 else (1.0, "bp")
        if regions:  # one collection, however many regions
            ax.broken_barh([((start - 1) / scale, (end - start + 1) / scale) for start, end, _ in regions],
                           (-0.05, 1.1), color=COLOURS["virus"], alpha=0.12, linewidth=0, label="called region")
        x, y, (lo, hi) = track_points(track["start"], track["end"], track["score"])
        empty = np.isnan(y)
        if len(x) <= 60:  # few chunks: each chunk's span as a bar at its score, plus its midpoint
            ax.hlines(y[~empty], lo[~empty] / scale, hi[~empty] / scale, color=COLOURS["others"], alpha=0.3,
                      linewidth=3)
        ax.plot(x / scale, y, color=COLOURS["others"], linewidth=1.2, marker="o" if len(x) <= 200 else None,
                markersize=3, label="chunk virus score")
        if empty.any():  # a gap in the line; the chunk's (or bin's) span drawn grey along the bottom
            ax.hlines(np.zeros(int(empty.sum())), lo[empty] / scale, hi[empty] / scale, color=COLOURS["no_frames"],
                      linewidth=5, label="chunk without frames")
        _score_lines(ax, rules, vertical=False)
        ax.legend(frameon=False, fontsize=7, loc="upper center", bbox_to_anchor=TRACK_LAYOUT.below_axes(0.5), ncols=3)
        ax.set_xlim(0, length / scale)
        ax.set_xlabel(f"position ({unit})")
        ax.set_title(rid if len(rid) <= TITLE_CHARS else rid[:TITLE_CHARS - 1] + "…", loc="left", fontsize=10)
        return _svg_uri(self.fig, close=False)

    def close(self) -> None:
        _close(self.fig)


def progress_arrays(samples: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(t_s, chunks, frames) of run.json's progress samples, from the start of the loop: the samples
    count from there (t 0, nothing done) but begin only after the first step, so that origin is added."""
    t, chunks, frames = (np.array([s.get(key, np.nan) for s in samples], dtype=float)
                         for key in ("t_s", "chunks", "frames"))
    if len(t) and t[0] > 0:
        t, chunks, frames = (np.concatenate([[0.0], a]) for a in (t, chunks, frames))
    return t, chunks, frames


def draw_throughput(ax, samples: list[dict]) -> None:
    """Frames per second of all ranks between samples (thinned to ~RATE_POINTS spans: one sample's
    step is noise), a constant over each span, the last sample kept."""
    t, _, frames = progress_arrays(samples)
    keep = np.unique(np.append(np.arange(0, len(t), max(1, len(t) // RATE_POINTS)), len(t) - 1))
    t, frames = t[keep], frames[keep]
    dt = np.diff(t)
    rate = np.divide(np.diff(frames), dt, out=np.full(len(dt), np.nan), where=dt > 0)
    ax.stairs(rate, t, color=COLOURS["busy"], linewidth=1.5, baseline=None)
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel("frames/s")
    ax.set_title("Throughput (all ranks)")
    ax.set_ylim(bottom=0)


def plot_progress(plt, samples: list[dict]) -> str | None:
    t, chunks, frames = progress_arrays(samples)
    if len(t) < 2:
        return None
    fig, (left, right) = PROGRESS_LAYOUT.figure(plt, panels=2)
    left.plot(t, chunks, color=COLOURS["others"], label="chunks")
    left.plot(t, frames, color=COLOURS["virus"], label="frames")
    left.set_xlabel("time since start (s)")
    left.set_ylabel("done")
    left.set_title("Progress")
    left.legend(frameon=False)
    draw_throughput(right, samples)
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
    fig, ax = RANKS_LAYOUT.taller(0.4 * len(rows)).figure(plt)
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



@dataclass
class Figures:
    """Every figure of the page as a `data:` URI (None where the run has nothing to draw)."""

    labels: str | None = None
    scores: str | None = None
    share: str | None = None
    tracks: dict[str, str] = field(default_factory=dict)  # sequence ID -> its score track
    progress: str | None = None
    ranks: str | None = None
    calibration: str | None = None


def draw(report: Report) -> Figures:
    """Draw every figure of the report, before any HTML is written."""
    plt = _pyplot()
    figs = Figures()
    if report.contigs is not None and report.contigs.labels:
        figs.labels = plot_labels(plt, report.contigs.labels)
    if report.chunks is not None and report.chunks.score_hist:
        figs.scores = plot_scores(plt, report.chunks.score_hist, report.rules)
    if report.contigs is not None and report.contigs.share_hist.sum():
        figs.share = plot_share(plt, report.contigs.share_hist, report.rules)
    if report.chunks is not None:
        lengths = {r["sequence_id"]: int(r.get("length", 0) or 0) for r in report.contigs.top}
        tracks = TrackFigure(plt)
        for rid, track in report.chunks.tracks.items():
            regions = report.regions.of_tracks.get(rid, []) if report.regions else []
            length = lengths.get(rid) or int(track["end"].max())
            figs.tracks[rid] = tracks.draw(rid, length, track, regions, report.rules)
        tracks.close()
    progress = report.run.get("progress")
    figs.progress = plot_progress(plt, progress) if progress else None
    per_rank = report.run.get("timings_s", {}).get("per_rank", [])
    figs.ranks = plot_ranks(plt, per_rank) if per_rank else None
    cal, contigs = report.calibrated, report.contigs
    if cal is not None and contigs is not None and contigs.probabilities is not None and len(contigs.probabilities):
        figs.calibration = plot_calibration(plt, cal, contigs.probabilities, contigs.labels.get("virus", 0))
    return figs


def plot_calibration(plt, cal: Calibrated, p: np.ndarray, called: int) -> str:
    """Reliability diagram (out of fold, from the file), the histogram of sequence probabilities
    (`p`, decreasing) and the estimated FDR against the number of sequences called by decreasing
    probability, with the sequences called and call.max_fdr marked."""
    fig, axes = CALIBRATION_LAYOUT.figure(plt, panels=3)
    for level, rows in (cal.bins or {}).items():
        axes[0].plot([r["mean_probability"] for r in rows], [r["virus_share"] for r in rows], marker="o",
                     label=f"{level}s", color=COLOURS["virus" if level == "sequence" else "others"])
    axes[0].plot([0, 1], [0, 1], color=COLOURS["line"], linestyle=":", linewidth=1.0, label="perfect")
    axes[0].set(xlabel="predicted P(virus) (out of fold)", ylabel="share virus", title="Reliability")
    axes[0].legend(frameon=False, fontsize=8)
    axes[1].hist(p, bins=SCORE_BINS, color=COLOURS["virus"])
    axes[1].set(xlabel="sequence virus_probability", ylabel="sequences", title="Probabilities")
    draw_fdr(axes[2], p, called, cal.max_fdr)
    axes[2].legend(frameon=False, fontsize=8)
    return _svg_uri(fig)


def draw_fdr(ax, p: np.ndarray, called: int, max_fdr: float) -> None:
    """The estimated FDR of calling the first k sequences of `p` (decreasing), by the calls' rule
    (`calibration.running_fdr`: a tie enters whole), the sequences called and call.max_fdr marked."""
    fdr = running_fdr(p)[0]
    step = max(1, len(p) // TRACK_POINTS)
    ax.plot(np.arange(1, len(p) + 1)[::step], fdr[::step], color=COLOURS["line"])
    ax.axvline(called, color=COLOURS["virus"], linestyle="--", label=f"called virus: {called:,}")
    if max_fdr:
        ax.axhline(max_fdr, color=COLOURS["others"], linestyle=":", label=f"call.max_fdr {max_fdr:g}")
    ax.set(xlabel="sequences called (by decreasing probability)", ylabel="estimated FDR", title="Estimated FDR")
