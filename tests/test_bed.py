"""regions.bed keeps every region for BED readers: an ID that such a reader takes for a comment or
header (`#...`, `track...`, `browser...`) is written with its first character escaped (`%23`), and
so is an ID starting with `%`, so decoding a first column is unambiguous."""

from __future__ import annotations

import io
from types import SimpleNamespace
from urllib.parse import unquote

import numpy as np

from vnp.results.tables import _regions_bed, bed_chrom
from vnp.results.text import IdText

IDS = ["#a", "track", "browser", "trackhub_1", "%41", "%", "plain", "a#b", "t", "b%"]


def decode(chrom: str) -> str:
    """What README tells a reader to do with regions.bed's first column."""
    return unquote(chrom[:3]) + chrom[3:] if chrom.startswith("%") else chrom


class Regions(SimpleNamespace):
    def __len__(self) -> int:
        return len(self.record)


def results(ids: list[str]) -> SimpleNamespace:
    """The parts of `vnp.results.tables.Results` that regions.bed is written from: one region a sequence."""
    n = len(ids)
    regions = Regions(record=np.arange(n), start=np.zeros(n, np.int64), end=np.full(n, 300),
                      first=np.zeros(n, np.int64), last=np.ones(n, np.int64))
    return SimpleNamespace(ids=IdText.of(ids), regions=regions, region_mean=np.full(n, 0.75),
                           region_max=np.full(n, 0.9), whole=np.ones(n, bool))


def bed_lines(text: str) -> list[list[str]]:
    """The data lines as BED tools read them (bedtools, UCSC): `#`, `track` and `browser` lines skipped."""
    return [line.split("\t") for line in text.splitlines() if not line.startswith(("#", "track", "browser"))]


def test_every_region_survives_a_bed_reader_and_decodes_to_its_id():
    fh = io.BytesIO()
    _regions_bed(fh, results(IDS))
    rows = bed_lines(fh.getvalue().decode())
    assert len(rows) == len(IDS)
    assert [decode(row[0]) for row in rows] == IDS
    assert [row[3] for row in rows] == [f"{i}|region_1_300" for i in IDS]  # column 4 as in regions.tsv


def test_ordinary_ids_are_written_as_they_are():
    assert [bed_chrom(i) for i in ("plain", "a#b", "t", "b%", "seq_track")] == ["plain", "a#b", "t", "b%", "seq_track"]
    assert [bed_chrom(i) for i in ("#a", "track", "browser1", "%41")] == ["%23a", "%74rack", "%62rowser1", "%2541"]
