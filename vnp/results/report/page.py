"""`OUT/report.html`: one self-contained page about a finished run.

The page needs nothing but itself: plots are SVG images in `data:` URIs, styles are inline, there
is no script, and a Content-Security-Policy forbids the browser any other load, so it opens from a
shared filesystem or an e-mail attachment. Its numbers are also in a JSON block
(`<script type="application/json" id="vnp-report-data">`) for programs and tests. The figures are
drawn first (`plots.draw`), then the sections only place them.
"""

from __future__ import annotations

import html
import json
import time
from contextlib import nullcontext
from pathlib import Path

from vnp.results.report.data import TABLE_ROWS, TOP_N, Report, _is_number, load
from vnp.results.calibration import running_fdr
from vnp.results.report.plots import COLOURS, Figures, draw
from vnp.run.folder import RunFolder
from vnp.support.atomic import AtomicFiles

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


CONTIG_SHOWN = ("sequence_id", "input", "length", "chunks", "viral_chunks", "chunks_without_frames",
                "fraction_viral", "max_virus_score", "mean_virus_score", "label", "confidence")


REGION_SHOWN = ("sequence_id", "region_id", "start", "end", "length", "chunks", "mean_virus_score",
                "max_virus_score", "kind")


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


ID_COLUMNS = ("sequence_id", "region_id", "chunk_id", "input")


ID_CHARS = 40  # the most characters of an ID shown in a table cell (all of it in the cell's title)


CELL_CHARS = 160  # the most characters of any other cell shown


def esc(value: object) -> str:
    return html.escape(str(value))


def cut(text: str, limit: int) -> tuple[str, str]:
    """(the text shown, the title attribute): a text longer than `limit` is cut, with an ellipsis,
    and given whole in the title (a tooltip); the JSON data block has it whole too."""
    if len(text) <= limit:
        return esc(text), ""
    return esc(text[:limit - 1]) + "…", f' title="{esc(text)}"'


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
            title = ""
            if name == "label" and value in COLOURS:
                text = f'<span class="pill" style="background:{COLOURS[value]}">{esc(value)}</span>'
            else:
                text, title = cut(text, ID_CHARS if name in ID_COLUMNS else CELL_CHARS)
            cells.append(f'<td{cls} data-col="{esc(name)}"{title}>{text}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    key = f' data-table="{esc(data_key)}"' if data_key else ""
    return f'<div class="scroll"><table{key}><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def script_json(data: object) -> str:
    """`data` as JSON that is safe inside a <script> element: `<`, `>` and `&` as \\u escapes, so no
    ID can end the element (`</script>`) or open a comment (`<!--`) there, and a JSON parser reading
    the element's text gets every string back exactly."""
    text = json.dumps(data, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


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


def write_report(out: Path, top: int = TOP_N, files: AtomicFiles | None = None) -> Path:
    """Write OUT/report.html from the files in OUT; returns its path. Within `files` (the tables it
    describes, not yet in place) the report is read from them and replaced together with them."""
    out = Path(out)
    path = RunFolder(out).report_html
    with AtomicFiles() if files is None else nullcontext(files) as target:
        page = render(load(out, top, target))
        target.write_text(path, page)
    return path


def render(report: Report) -> str:
    figs = draw(report)
    run = report.run
    title = f"vnp report: {report.out.resolve().name}"
    sections = [_section_run(report), _section_labels(report, figs), _section_scores(report, figs),
                _section_calibration(report, figs), _section_top(report), _section_tracks(report, figs), _section_performance(report, figs),
                _section_resume(report)]
    data = script_json(report.data())
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
    parts = ["<section><h2>Run</h2>"]
    if report.unfinished:
        parts.append(f'<p class="warn">{esc(report.unfinished)}</p>')
    parts += [table(["item", "value"], [[k, v] for k, v in facts], "run", align=False)]
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


def _section_labels(report: Report, figs: Figures) -> str:
    parts = ["<section><h2>Counts and labels</h2>"]
    counts = report.run.get("counts", {})
    shown = [[k, v] for k, v in counts.items() if isinstance(v, int)]
    if report.contigs is None:
        parts.append(note("No contigs.tsv in this output folder."))
    else:
        labels = report.contigs.labels
        grid = ['<div class="grid"><div>']
        grid.append(figure(figs.labels, "bar chart of sequences by label") if figs.labels else
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


def _section_scores(report: Report, figs: Figures) -> str:
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
    if figs.scores:
        parts.append(note("Chunk virus scores: a chunk's score (the axis) is its highest P(virus) over its frames; "
                          "its colour is its call, which also weighs its highest P(others) over its frames. The "
                          "two can come from different frames, so a chunk of several frames can score above 0.5 "
                          "and still be called others (another of its frames scored higher for others); 0.5 is the "
                          "cut only for a chunk of one frame (below 0.5, a chunk is always called others)."))
    parts.append('<div class="grid">')
    if figs.scores:
        parts.append("<div>" + figure(figs.scores, "histogram of chunk virus scores", wide=True) + "</div>")
    if figs.share:
        parts.append("<div>" + figure(figs.share, "histogram of viral chunk share per sequence", wide=True) + "</div>")
    return "".join(parts) + "</div></section>"


def _section_calibration(report: Report, figs: Figures) -> str:
    """With a calibration (run.json `calls.calibration`): its file and checksum, and the figure of
    `plots.plot_calibration` (the cutoff marked). Nothing without one."""
    cal, contigs = report.calibrated, report.contigs
    if cal is None or contigs is None:
        return ""
    parts = ["<section><h2>Calibration</h2>", table(["item", "value"], [
        ["calibration file", cal.path], ["sha256", cal.sha256]], "calibration", align=False)]
    p = contigs.probabilities
    if p is None or not len(p):
        return "".join(parts) + note("contigs.tsv has no virus_probability.") + "</section>"
    if cal.bins is None:
        parts.append(note("The calibration file is no longer at that path with that checksum: no reliability "
                          "diagram."))
    called = contigs.labels.get("virus", 0)
    how = (f"the largest set with estimated FDR <= call.max_fdr {cal.max_fdr:g}; its estimated FDR is "
           f"{running_fdr(p)[0][called - 1]:.4f}" if cal.max_fdr and called else
           "by the call.* rules, not by probability (call.max_fdr picks the set from the curve)")
    parts.append(f'<p data-calibrated-called="{called}">{called:,} sequences called virus: {esc(how)}.</p>')
    parts.append(figure(figs.calibration, "reliability diagram, probability histogram and estimated FDR", wide=True))
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


def _section_tracks(report: Report, figs: Figures) -> str:
    parts = ["<section><h2>Score tracks</h2>"]
    if report.chunks is None or not report.chunks.tracks:
        parts.append(note("No sequence with scored chunks to plot."))
        return "".join(parts) + "</section>"
    parts.append(note("Chunk virus score along each of the top sequences (line through the chunk midpoints, "
                      "bars over each chunk's span); a gap in the line and a grey bar along the bottom: chunks "
                      "without a stop-free frame; "
                      "shaded: called regions; dashed: 0.5; dotted: call.min_score."))
    parts.append('<div class="grid">')
    for rid, uri in figs.tracks.items():
        shown = rid if len(rid) <= ID_CHARS else rid[:ID_CHARS - 1] + "…"
        parts.append(f'<div data-track="{esc(rid)}">{figure(uri, f"score track of {shown}", wide=True)}</div>')
    return "".join(parts) + "</div></section>"


def _section_performance(report: Report, figs: Figures) -> str:
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
    uri = figs.progress
    parts.append(figure(uri, "progress and throughput over time", wide=True) if uri else
                 note("run.json has no progress samples (recorded by newer vnp versions)."))
    if per_rank:
        if figs.ranks:
            parts.append(figure(figs.ranks, "time per rank"))
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

