"""OUT/report.html: its numbers equal those of the run's files; it renders in a real browser without
console errors or network requests; older output folders still get a report."""

from __future__ import annotations

import csv
import json
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from benchmarks.bench_report import synthetic_out
from tests import chromium
from tests.helpers import one_error_line
from vnp.results.report import write_report
from vnp.results.report.data import TOP_N
from vnp.results.report.plots import track_points
from vnp.report import main as report_main


class Page(HTMLParser):
    """The parts of the report a program reads: the JSON block, tables by data-table, data-* marks."""

    def __init__(self, text: str):
        super().__init__()
        self.tables: dict[str, list[dict[str, str]]] = {}
        self.marks: dict[str, list[str]] = {}  # data-* attribute name -> values
        self.cards: dict[str, str] = {}
        self.sources: list[str] = []
        self._table = self._row = self._cell = self._card = None
        self._json = None
        self.data = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("src", "href"):
            if key in attrs:
                self.sources.append(attrs[key])
        for key, value in attrs.items():
            if key.startswith("data-"):
                self.marks.setdefault(key, []).append(value)
        if tag == "table" and "data-table" in attrs:
            self._table = self.tables.setdefault(attrs["data-table"], [])
        elif tag == "tr" and self._table is not None:
            self._row = {}
        elif tag == "td" and self._row is not None:
            self._cell = [attrs["data-col"], ""]
        elif tag == "div" and "data-card" in attrs:
            self._card = [attrs["data-card"], ""]
        elif tag == "script" and attrs.get("id") == "vnp-report-data":
            self._json = ""

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self._row[self._cell[0]] = self._cell[1].strip()
            self._cell = None
        elif tag == "tr" and self._row:
            self._table.append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None
        elif tag == "b" and self._card is not None:
            self.cards[self._card[0]] = self._card[1].strip()
            self._card = None
        elif tag == "script" and self._json is not None:
            self.data = json.loads(self._json)
            self._json = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[1] += data
        if self._card is not None:
            self._card[1] += data
        if self._json is not None:
            self._json += data


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))


def plain(text: str) -> str:
    return text.replace(",", "")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> tuple[Path, Page]:
    out = tmp_path_factory.mktemp("synthetic")
    synthetic_out(out, 400, seed=3)
    path = write_report(out)
    return out, Page(path.read_text())


def test_counts_and_labels_equal_contigs_tsv_and_run_json(synthetic):
    out, page = synthetic
    contigs = rows(out / "contigs.tsv")
    labels = Counter(r["label"] for r in contigs)
    assert page.data["contigs"]["sequences"] == len(contigs)
    assert page.data["contigs"]["labels"] == dict(labels)
    assert {r["label"]: int(plain(r["sequences"])) for r in page.tables["labels"]} == dict(labels)
    assert {r["confidence"]: int(plain(r["sequences"])) for r in page.tables["confidence"]} == \
        dict(Counter(r["confidence"] for r in contigs))
    run = json.loads((out / "run.json").read_text())
    assert page.data["run_counts"] == run["counts"]
    shown = {r["count"]: int(plain(r["value"])) for r in page.tables["counts"]}
    assert shown == {k: v for k, v in run["counts"].items() if isinstance(v, int)}
    assert int(plain(page.cards["sequences"])) == run["counts"]["sequences"]
    assert int(plain(page.cards["viral sequences"])) == run["counts"]["viral_sequences"]
    assert int(plain(page.cards["regions"])) == len(rows(out / "regions.tsv"))
    chunks = rows(out / "chunks.tsv")
    viral = sum(r["label"] == "virus" for r in chunks)
    assert 0 < viral < len(chunks) < run["counts"]["frames"]  # every card below tells its own number
    assert int(plain(page.cards["chunks"])) == run["counts"]["chunks"] == len(chunks)
    assert int(plain(page.cards["viral chunks"])) == run["counts"]["viral_chunks"] == viral
    assert int(plain(page.cards["frames"])) == run["counts"]["frames"]


def test_summary_and_run_facts_equal_the_files(synthetic):
    out, page = synthetic
    summary = rows(out / "summary.tsv")
    assert page.data["summary"] == summary
    assert [{k: plain(v) for k, v in r.items()} for r in page.tables["summary"]] == summary
    run = json.loads((out / "run.json").read_text())
    facts = {r["item"]: r["value"] for r in page.tables["run"]}
    assert facts["world size"] == str(run["world_size"]) and facts["launcher"] == run["launcher"]
    assert facts["pack fingerprint"] == run["models"]["fingerprint"]
    assert [r["sha256"] for r in page.tables["inputs"]] == [i["sha256"] for i in run["inputs"]]
    assert page.marks["data-resumed"] == [str(run["resumed_units"])]
    assert page.marks["data-rejected"] == [str(run["rejected_progress_parts"])]
    call = run["calls"]["call"]
    assert page.data["call"] == {"min_score": call["min_score"], "min_fraction": call["min_fraction"], "recorded": True}
    assert page.marks["data-min-score"] == [str(call["min_score"])]
    assert page.marks["data-min-fraction"] == [str(call["min_fraction"])]
    settings = {r["key"]: (r["value"], r["default"]) for r in page.tables["settings"]}
    assert settings == {"precision": ("bf16", "auto"), "threads": ("8", "0")}  # as synthetic_out wrote them
    ranks = run["timings_s"]["per_rank"]
    assert [r["rank"] for r in page.tables["per_rank"]] == [str(r["rank"]) for r in ranks]
    assert [float(r["frames_per_s"]) for r in page.tables["per_rank"]] == [round(r["frames"] / r["loop_s"], 1)
                                                                           for r in ranks]


def test_histograms_and_top_tables_follow_the_tables(synthetic):
    out, page = synthetic
    chunks = rows(out / "chunks.tsv")
    scored = [r for r in chunks if r["max_score2"] != "NA"]
    histogram = page.data["chunks"]["score_histogram"]
    assert page.data["chunks"]["chunks"] == len(chunks)
    assert page.data["chunks"]["without_frames"] == len(chunks) - len(scored)
    for label in ("virus", "others"):
        expected = np.histogram([float(r["max_score2"]) for r in scored if r["label"] == label], np.linspace(0, 1, 51))
        assert histogram[label] == expected[0].tolist()
    contigs = rows(out / "contigs.tsv")
    ranked = sorted(enumerate(contigs), key=lambda ir: (
        ir[1]["label"] != "virus", -float(ir[1]["max_virus_score"].replace("NA", "-1")),
        -float(ir[1]["fraction_viral"].replace("NA", "-1")), ir[0]))
    top = [r["sequence_id"] for _, r in ranked[:TOP_N]]
    assert page.data["contigs"]["top"] == top
    assert [r["sequence_id"] for r in page.tables["top_sequences"]] == top
    by_id = {r["sequence_id"]: r for r in contigs}
    for shown in page.tables["top_sequences"]:
        assert plain(shown["max_virus_score"]) == by_id[shown["sequence_id"]]["max_virus_score"]
        assert shown["label"] == by_id[shown["sequence_id"]]["label"]
    assert page.marks["data-track"] == [rid for rid in top if by_id[rid]["max_virus_score"] != "NA"]
    regions = rows(out / "regions.tsv")
    best = sorted(enumerate(regions), key=lambda ir: (-float(ir[1]["mean_virus_score"]), -int(ir[1]["length"]), ir[0]))
    assert [r["region_id"] for r in page.tables["top_regions"]] == [r["region_id"] for _, r in best[:TOP_N]]


def test_a_folder_of_an_older_run_gets_a_report_that_says_what_is_missing(tmp_path):
    synthetic_out(tmp_path, 30)
    for name in ("regions.tsv", "summary.tsv", "config.yaml"):
        (tmp_path / name).unlink()
    run = json.loads((tmp_path / "run.json").read_text())
    for key in ("calls", "progress"):
        del run[key]
    (tmp_path / "run.json").write_text(json.dumps(run))
    text = write_report(tmp_path).read_text()
    assert "No regions.tsv in this output folder" in text
    assert "No summary.tsv in this output folder" in text
    assert "No config.yaml in this output folder" in text
    assert "run.json records no call settings" in text
    assert "run.json has no progress samples" in text
    assert Page(text).data["call"] == {"min_score": 0.0, "min_fraction": 0.5, "recorded": False}


def test_long_sequences_are_binned_and_empty_chunks_stay_gaps():
    start = np.arange(10_000) * 250 + 1
    score = np.linspace(0, 1, 10_000)
    score[:20] = np.nan  # the first bins hold only chunks without frames
    x, y, (lo, hi) = track_points(start, start + 499, score, limit=500)
    assert len(x) == len(y) == len(lo) == len(hi) == 500
    assert lo[0] == 0 and hi[-1] == start[-1] + 499  # the bins cover the whole sequence
    assert np.isnan(y[0]) and not np.isnan(y[-1])
    assert np.nanmax(y) == 1.0  # the highest score of a bin is kept


def test_vnp_report_on_a_folder_without_a_run_says_so(tmp_path, capsys):
    assert report_main([str(tmp_path)]) == 2  # `vnp report OUT`
    one_error_line(capsys.readouterr().err, "run.json")
    assert not (tmp_path / "report.html").exists()


def test_a_table_without_a_needed_column_is_named_in_one_line(tmp_path, capsys):
    synthetic_out(tmp_path, 5)
    lines = (tmp_path / "contigs.tsv").read_text().splitlines()
    # drop the last six columns: fraction_viral ... reason
    (tmp_path / "contigs.tsv").write_text("\n".join(line.rsplit("\t", 6)[0] for line in lines) + "\n")
    assert report_main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"vnp: error: {tmp_path / 'contigs.tsv'}: no column 'fraction_viral' in its header"]


def test_a_table_with_a_bad_number_is_named_in_one_line(tmp_path, capsys):
    synthetic_out(tmp_path, 5)
    text = (tmp_path / "chunks.tsv").read_text().splitlines()
    fields = text[3].split("\t")
    fields[6] = "high"  # max_score2
    (tmp_path / "chunks.tsv").write_text("\n".join(text[:3] + ["\t".join(fields)] + text[4:]) + "\n")
    assert report_main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"vnp: error: {tmp_path / 'chunks.tsv'}: ") and "'high'" in err[0]
    assert not (tmp_path / "report.html").exists()


def test_the_report_needs_nothing_from_the_network(synthetic):
    out, page = synthetic
    text = (out / "report.html").read_text()
    assert "default-src 'none'" in text  # the browser refuses any load the page did not inline
    assert page.sources and all(s.startswith("data:") for s in page.sources)
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in text


@pytest.fixture
def demo_report(demo_run) -> Path:
    return demo_run[0] / "report.html"  # predict writes the report at its end


def test_predict_writes_the_report_with_the_run_numbers(demo_report):
    page = Page(demo_report.read_text())
    contigs = rows(demo_report.parent / "contigs.tsv")
    assert page.data["contigs"]["labels"] == dict(Counter(r["label"] for r in contigs))
    assert page.data["run_counts"] == json.loads((demo_report.parent / "run.json").read_text())["counts"]
    assert page.data["summary"] == rows(demo_report.parent / "summary.tsv")  # the calls and regions of predict
    assert page.data["regions"]["regions"] == len(rows(demo_report.parent / "regions.tsv"))


@pytest.mark.slow
def test_the_demo_report_renders_in_chromium_without_errors_or_requests(demo_report, tmp_path):
    if chromium.find_chromium() is None:
        pytest.skip("chromium is not installed (.ci/run installs it: apt-get install chromium)")
    # the checks can fail: a page with a script error and an outside image is caught
    bad = tmp_path / "bad.html"
    bad.write_text('<html><body><img src="http://127.0.0.1:9/x.png"><script>missing()</script></body></html>')
    caught = chromium.render(bad, tmp_path / "bad.png", height=300)
    assert caught.console and caught.page_requests == ["http://127.0.0.1:9/x.png"]

    shot = chromium.render(demo_report, tmp_path / "report.png")
    assert shot.console == []
    assert shot.page_requests == []
    from matplotlib import image

    pixels = image.imread(shot.png)[..., :3]
    assert pixels.shape[:2] == (4000, 1280)
    assert pixels.std() > 0.05  # not blank: text, tables and plots
    top = pixels[:1000]
    assert len(np.unique(top.reshape(-1, 3), axis=0)) > 50  # many colours: anti-aliased text and plots


def test_the_throughput_of_a_finished_run_has_data_points(demo_report):
    """The demo's one step finishes before the first 1 s sample interval: the curve still holds the
    run's frames per second (from the start of the loop, where nothing is done)."""
    from vnp.results.report.plots import _pyplot, draw_throughput

    run = json.loads((demo_report.parent / "run.json").read_text())
    fig, ax = _pyplot().subplots()
    draw_throughput(ax, run["progress"])
    (curve,) = ax.patches
    assert np.nanmax(curve.get_data().values) > 0
    assert curve.get_data().edges[0] == 0  # from the start of the loop
    assert curve.get_data().edges[-1] == run["progress"][-1]["t_s"]


def test_the_fdr_curve_follows_the_calls_rule_for_ties():
    """The report's estimated-FDR curve is calibration's: a tie enters whole (as estimated_fdr and
    select_by_fdr treat it), so the curve at k inside a tie is that of the whole tie."""
    from vnp.results.calibration import estimated_fdr
    from vnp.results.report.plots import _pyplot, draw_fdr

    p = np.array([0.99, 0.9, 0.8, 0.8, 0.8, 0.5])
    fig, ax = _pyplot().subplots()
    draw_fdr(ax, p, called=5, max_fdr=0.1)
    k, fdr = ax.get_lines()[0].get_data()
    np.testing.assert_array_equal(k, np.arange(1, 7))
    np.testing.assert_allclose(fdr, estimated_fdr(p, np.ones(6, bool)))
    assert fdr[2] == fdr[3] == fdr[4] == pytest.approx((0.01 + 0.1 + 0.2 * 3) / 5)


def track_args(rid: str, length: int, scores: list[float], regions=()) -> tuple:
    """TrackFigure.draw's arguments for chunks of 500 bp with `scores` (NaN: no frames)."""
    from vnp.results.report.data import CallRules

    start = np.arange(len(scores)) * 500 + 1
    track = {"start": start, "end": np.minimum(start + 499, length), "score": np.array(scores, float)}
    return rid, length, track, list(regions), CallRules(min_score=0.7, min_fraction=0.5, recorded=True)


def svg_of(uri: str) -> str:
    import base64

    return base64.b64decode(uri.split(",", 1)[1]).decode()


def test_a_track_drawn_after_another_equals_one_drawn_alone():
    """The report draws every track on one figure: nothing of the previous track (its regions, its
    gaps, its points, its title or axis unit) is left on the next one."""
    from vnp.results.report.plots import TrackFigure, _pyplot

    busy = track_args("x" * 70, 150_000, [np.nan] * 10 + list(np.linspace(0, 1, 290)), [(1, 20_000, "partial")])
    plain_one = track_args("b", 1500, [0.2, 0.4, 0.9])
    figure = TrackFigure(_pyplot())
    figure.draw(*busy)
    after = figure.draw(*plain_one)
    figure.close()
    alone = TrackFigure(_pyplot())
    assert after == alone.draw(*plain_one)
    alone.close()
    assert "called region" not in svg_of(after) and "chunk without frames" not in svg_of(after)


def test_every_track_has_the_same_size_and_a_title_that_fits():
    """Fixed margins, not a tight bounding box: the tracks line up on the page whatever their tick
    labels or legend, and a long sequence ID is cut to TITLE_CHARS (the page gives it whole)."""
    import re

    from vnp.results.report.plots import TITLE_CHARS, TrackFigure, _pyplot

    figure = TrackFigure(_pyplot())
    long_id = "NODE_1_length_150000_cov_12.345678_" + "z" * 40
    svgs = [svg_of(figure.draw(*args)) for args in (
        track_args(long_id, 150_000, list(np.linspace(0, 1, 300)), [(1, 20_000, "partial")]),
        track_args("short", 1500, [0.2, np.nan, 0.9]),
        track_args("mid", 9_999, [0.5] * 20))]
    figure.close()
    sizes = {re.search(r'<svg[^>]* width="([\d.]+pt)" height="([\d.]+pt)"', svg).groups() for svg in svgs}
    assert len(sizes) == 1
    assert long_id[:TITLE_CHARS - 1] + "…" in svgs[0] and long_id[:TITLE_CHARS] not in svgs[0]
