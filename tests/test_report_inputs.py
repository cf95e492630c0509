"""`vnp report` on a damaged or edited OUT: a run.json or table that is not UTF-8, or a run.json
entry of the wrong type, is one line and exit 2, never a traceback, and no page is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.bench_report import synthetic_out
from tests.helpers import one_error_line
from vnp.report import main as report_main


@pytest.fixture
def out(tmp_path) -> Path:
    synthetic_out(tmp_path, 30, seed=1)
    return tmp_path


def edit(out: Path, change) -> None:
    run = json.loads((out / "run.json").read_text())
    change(run)
    (out / "run.json").write_text(json.dumps(run))


@pytest.mark.parametrize("change, message", [
    (lambda r: r.update(models=5), "run.json: models must be an object, not 5"),
    (lambda r: r.update(work_units="x"), "run.json: work_units must be an integer, not \"x\""),
    (lambda r: r.update(counts=[1]), "run.json: counts must be an object"),
    (lambda r: r["inputs"][0].update(size="big"), "run.json: inputs[0].size must be an integer"),
    (lambda r: r["progress"][0].update(t_s=[1]), "run.json: progress[0].t_s must be a number"),
    (lambda r: r["timings_s"]["per_rank"][0].update(busy_s="x"), "timings_s.per_rank[0].busy_s must be a number"),
    (lambda r: r["calls"]["call"].update(min_score="high"), "run.json: calls.call.min_score must be a number"),
    (lambda r: r.update(resumed_units=True), "run.json: resumed_units must be an integer, not true"),
])
def test_a_mistyped_run_json_is_one_line(out, capsys, change, message):
    edit(out, change)
    assert report_main([str(out)]) == 2
    one_error_line(capsys.readouterr().err, message)
    assert not (out / "report.html").exists() and not list(out.glob("*.tmp"))


@pytest.mark.parametrize("name, message", [
    ("run.json", "run.json: not UTF-8 text"),
    ("contigs.tsv", "contigs.tsv: row 3: not UTF-8 text"),
    ("chunks.tsv", "chunks.tsv: header: not UTF-8 text"),
    ("summary.tsv", "summary.tsv: row 2: not UTF-8 text"),
])
def test_a_file_that_is_not_utf8_is_one_line(out, capsys, name, message):
    path = out / name
    lines = path.read_bytes().split(b"\n")
    row = {"run.json": 0, "contigs.tsv": 2, "chunks.tsv": 0, "summary.tsv": 1}[name]
    lines[row] = lines[row][:5] + b"\xe9" + lines[row][5:]
    path.write_bytes(b"\n".join(lines))
    assert report_main([str(out)]) == 2
    one_error_line(capsys.readouterr().err, message)
