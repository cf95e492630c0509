"""IDs that are hostile to the page: `<!--<script>` in the JSON data block (a browser's script
parser would read on past `</script>`), and IDs of thousands of characters in the tables (cut, with
the whole ID in the cell's title and in the data block)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from benchmarks.bench_report import synthetic_out
from tests.test_report import Page, rows
from vnp.results.report import write_report
from vnp.results.report.page import ID_CHARS

HOSTILE = "x<!--<script>&</script>" + "L" * 5000 + "_"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("hostile")
    synthetic_out(out, 60, seed=4)
    for name in ("contigs.tsv", "chunks.tsv", "regions.tsv"):
        path = out / name
        path.write_text(re.sub(r"\bcontig_(\d+)", lambda m: HOSTILE + m.group(1), path.read_text()))
    return out, write_report(out).read_text()


def test_the_data_block_has_no_angle_bracket_and_gives_every_id_back(hostile):
    out, text = hostile
    start = text.index('<script type="application/json" id="vnp-report-data">')
    block = text[text.index(">", start) + 1:text.index("</script>", start)]
    assert "<" not in block and ">" not in block
    data = json.loads(block)
    contigs = {r["sequence_id"] for r in rows(out / "contigs.tsv")}
    assert data["contigs"]["top"] and set(data["contigs"]["top"]) <= contigs
    assert all(rid.startswith(HOSTILE) for rid in data["contigs"]["top"] + data["tracks"])
    assert Page(text).data == data  # an HTML parser ends the element where the page does


def test_long_ids_are_cut_in_tables_and_whole_in_titles(hostile):
    out, text = hostile
    page = Page(text)
    top = page.tables["top_sequences"]
    assert top and all(len(r["sequence_id"]) == ID_CHARS and r["sequence_id"].endswith("…") for r in top)
    titles = re.findall(r'<td[^>]*data-col="sequence_id" title="([^"]*)"', text)
    whole = [t.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&") for t in titles]
    assert whole[:len(top)] == page.data["contigs"]["top"]
    regions = page.tables["top_regions"]
    assert regions and all(len(r["region_id"]) == ID_CHARS for r in regions)
    # the numbers stay in view: every other cell of the top tables is short
    assert all(len(v) < 20 for r in top + regions for k, v in r.items() if k not in ("sequence_id", "region_id"))
