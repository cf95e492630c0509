"""vnp.results.text (the tables' text, a block of rows at a time) against the Python formatting it
stands for, and the tables it writes against the per-row writers it replaced (kept here as the oracle)."""

from __future__ import annotations

from dataclasses import asdict, replace
from urllib.parse import quote

import numpy as np
import pytest

from vnp.results import calls as vcalls
from vnp.results import tables, text
from vnp.results.tables import compute_results, write_tables
from vnp.run.plan import load_plan, pack_inputs
from vnp.seq.chunking import chunk_id
from vnp.seq.filters import reason
from vnp.seq.frames import frame_id
from vnp.seq.seqio import fasta_record
from vnp.support.config import PredictConfig


def rows(column: np.ndarray) -> list[str]:
    return text.lines([column], len(column)).decode("utf-8").split("\n")[:-1]


def test_ints_are_str_of_each_value():
    rng = np.random.default_rng(0)
    values = np.concatenate([[0, 1, 9, 10, 99, 100, 2 ** 31, 2 ** 32 - 1, 2 ** 32, 2 ** 63 - 1],
                             rng.integers(0, 10 ** 6, 1000), rng.integers(0, 2 ** 62, 1000)]).astype(np.int64)
    assert rows(text.ints(values)) == list(map(str, values.tolist()))
    negative = np.array([-1, 0, -(2 ** 63), 5, -100], dtype=np.int64)
    assert rows(text.ints(negative)) == list(map(str, negative.tolist()))
    assert rows(text.ints(np.array([0, 7, 123456]), 6)) == ["000000", "000007", "123456"]
    assert rows(text.ints(np.zeros(0, np.int64))) == []


def test_fixed_is_percent_six_f_and_na():
    """Ties and near-ties of x * 10^6 (k / 2^7, ...), signs, zeros, huge and non-finite values."""
    rng = np.random.default_rng(1)
    edges = [0.0, -0.0, 1.0, -1.0, 0.5, 1 / 128, 3 / 128, 5e-7, 1.5e-6, 2.5e-6, 0.0000005, 0.9999995,
             0.99999949999, 0.0078125, 123456.5e-6, -1e-9, 1e-300, 1e15, 4.5e9, 1e20, -1e20, np.nan, -np.nan,
             np.inf, -np.inf, np.nextafter(0.5e-6, 1), np.nextafter(0.5e-6, 0)]
    ties = np.arange(1, 1 << 12, 2) / 2.0 ** 12  # every exact tie of six decimals with a short binary fraction
    values = np.concatenate([edges, ties, rng.random(20_000), -rng.random(1000), rng.random(1000) * 1e6,
                             rng.random(1000).astype(np.float32)])
    assert rows(text.fixed(values)) == ["NA" if v != v else "%.6f" % v for v in values.tolist()]
    assert rows(text.fixed(np.array([0.0005, 0.0015, 1 / 3, np.nan]), 3)) == ["%.3f" % v for v in
                                                                               (0.0005, 0.0015, 1 / 3)] + ["NA"]


def test_float32_shortest_matches_numpy_on_random_and_edge_values():
    """(test_outputs checks every float32 of whole stretches.)"""
    values = np.concatenate([[0, 1, 1e-4, 9.9999e-5, 0.5, np.nan, np.inf, -1.5, 3e38, 1e-45],
                             np.random.default_rng(2).random(10_000)]).astype(np.float32)
    assert rows(text.float32_shortest(values)) == values.astype(str).tolist()


def test_columns_lines_and_placed_rows():
    a = text.cells([b"x", b"", b"long cell"])
    b = text.with_texts(text.ints(np.array([1, 22, 333])), np.array([1]), [b"NA wider than before"])
    assert text.lines([a, b"\t", b, b"|"], 3) == b"x\t1|\n\tNA wider than before|\nlong cell\t333|\n"
    placed = text.stacked(4, [(np.array([0, 2]), text.line_matrix([text.cells([b"h1", b"h2"])], 2)),
                              (np.array([1, 3]), text.line_matrix([text.cells([b"body", b"b"])], 2))])
    assert text.joined(placed) == b"h1\nbody\nh2\nb\n"
    assert text.lines([text.choice((b"no", b"yes"), np.array([True, False, True]))], 3) == b"yes\nno\nyes\n"


def test_windows_read_each_row_from_its_start_even_at_the_end():
    data = np.frombuffer(b"abcdefghij", np.uint8)
    got = text.windows(data, np.array([0, 7, 9, 3]), np.array([3, 3, 1, 0]))
    assert rows(got) == ["abc", "hij", "j", ""]


@pytest.mark.parametrize("cells", [1, 50, 1 << 22])
def test_blocks_cover_every_item_once_within_the_budget(cells):
    widths = np.array([3] * 40 + [1000] + [5] * 200 + [2] * 30)
    lines = np.arange(len(widths)) % 4
    for lines_of in (None, lambda s: lines[s]):
        spans = list(text.blocks(len(widths), lambda s: widths[s], lines_of, cells=cells, most=64))
        assert [s.start for s in spans] == [0] + [s.stop for s in spans[:-1]] and spans[-1].stop == len(widths)
        for s in spans:
            count = (s.stop - s.start) if lines_of is None else max(int(lines[s].sum()), 1)
            assert s.stop - s.start == 1 or widths[s].max() * count <= cells
            assert s.stop - s.start <= 64


def test_id_text_columns_prefixes_and_bytes():
    ids = text.IdText.of(["a", "é€", "#x", "track", "trac", "%"])
    assert rows(ids.column(np.array([5, 1, 0, 1]))) == ["%", "é€", "a", "é€"]
    assert [ids.text(r) for r in range(6)] == ["a", "é€", "#x", "track", "trac", "%"]
    assert ids.starts_with([b"#", b"track", b"%"]).tolist() == [False, False, True, True, False, True]
    assert ids.any_byte(np.arange(256) >= 128).tolist() == [False, True, False, False, False, False]


# The per-row writers the block-wise ones replaced: the oracle for the files they write.

def _fixed(values: np.ndarray) -> list[str]:
    return ["NA" if v != v else "%.6f" % v for v in values.tolist()]


def _f32(values: np.ndarray) -> list[str]:
    return [str(np.float32(v)) for v in values.tolist()]


def _escape(i: str, safe: str) -> str:
    return quote(i, safe=safe) if any(c not in safe for c in i) else i


def old_tables(results, plan, work, keys, scores, width: int, filters) -> dict[str, str]:
    ids = [results.ids.text(r) for r in range(plan.n_records)]
    chunks, calls, regions = results.chunks, results.calls, results.regions
    cids = [chunk_id(ids[r], k) for r, k in zip(results.chunk_record.tolist(), results.chunk_number.tolist())]
    files = {"prediction_results.txt": "Sequence_ID\tPrediction\tscore1\tscore2\n" + "".join(
        f"{frame_id(cids[k // 6], k % 6)}\t{'virus' if b > a else 'others'}\t{x}\t{y}\n"
        for k, a, b, x, y in zip(keys.tolist(), scores[:, 0].tolist(), scores[:, 1].tolist(), _f32(scores[:, 0]),
                                 _f32(scores[:, 1])))}
    framed = np.flatnonzero(chunks.has_frames)
    files["prediction_results_highestscore.csv"] = "Modified_ID\tIs_Virus\tmax_score_0\tmax_score_1\n" + "".join(
        f"{cids[c]}\t{v}\t{a}\t{b}\n" for c, v, a, b in zip(
            framed.tolist(), (chunks.max_virus[framed] >= chunks.max_other[framed]).tolist(),
            _f32(chunks.max_other[framed]), _f32(chunks.max_virus[framed])))
    label = np.array(["others", "virus", "no_frames"])[np.where(chunks.has_frames, results.viral, 2)]
    files["chunks.tsv"] = "chunk_id\tsequence_id\tstart\tend\tframes\tmax_score1\tmax_score2\tlabel\n" + "".join(
        f"{c}\t{ids[r]}\t{s + 1}\t{e}\t{n}\t{a}\t{b}\t{lab}\n" for c, r, s, e, n, a, b, lab in zip(
            cids, results.chunk_record.tolist(), results.starts.tolist(), results.ends.tolist(), chunks.frames.tolist(),
            _fixed(chunks.max_other), _fixed(chunks.max_virus), label.tolist()))
    settings = asdict(filters)
    contig_rows = []
    for r in range(plan.n_records):
        decided = calls.label[r] <= vcalls.VIRUS
        why = reason(int(plan.filtered[r]), int(plan.lengths[r]), int(plan.n_bases[r]), settings) \
            if calls.label[r] == vcalls.FILTERED else ""
        contig_rows.append("\t".join(map(str, [
            ids[r], results.inputs[results.input_of[r]], plan.lengths[r], calls.chunks[r], calls.viral_chunks[r],
            calls.chunks[r] - calls.with_frames[r], *_fixed(calls.fraction[r:r + 1]), *_fixed(calls.max_virus[r:r + 1]),
            *_fixed(calls.mean_virus[r:r + 1]), vcalls.LABELS[calls.label[r]], vcalls.CONFIDENCE[calls.confidence[r]],
            why, calls.support[r] if decided else "NA", *_fixed(calls.margin[r:r + 1]),
            results.regions_per_record[r]])) + "\n")
    files["contigs.tsv"] = "\t".join(tables.CONTIG_COLUMNS) + "\n" + "".join(contig_rows)
    tsv, bed, gff, partial = [], [], ["##gff-version 3\n"], []
    previous = None
    for i in range(len(regions)):
        r, s, e = int(regions.record[i]), int(regions.start[i]), int(regions.end[i])
        name, n = f"{ids[r]}|region_{s + 1}_{e}", int(regions.last[i] - regions.first[i] + 1)
        mean, top = _fixed(results.region_mean[i:i + 1])[0], _fixed(results.region_max[i:i + 1])[0]
        kind = "whole" if results.whole[i] else "partial"
        tsv.append(f"{ids[r]}\t{name}\t{s + 1}\t{e}\t{e - s}\t{n}\t{mean}\t{top}\t{kind}\n")
        score = int(np.clip(np.round(1000 * results.region_mean[i]), 0, 1000))
        bed.append(f"{tables.bed_chrom(ids[r])}\t{s}\t{e}\t{name}\t{score}\t.\n")
        seqid = _escape(ids[r], tables._SEQID_SAFE)
        if r != previous:
            gff.append(f"##sequence-region {seqid} 1 {int(plan.lengths[r])}\n")
            previous = r
        gff.append(f"{seqid}\tvnp\tviral_sequence\t{s + 1}\t{e}\t{mean}\t.\t.\tID={_escape(name, tables._VALUE_SAFE)};"
                   f"kind={kind};chunks={n};max_virus_score={top}\n")
        if not results.whole[i]:
            partial.append((name, r, s, e))
    files["regions.tsv"] = "\t".join(tables.REGION_COLUMNS) + "\n" + "".join(tsv)
    files["regions.bed"], files["regions.gff3"] = "".join(bed), "".join(gff)
    packed = (work / "sequences.bin").read_bytes().decode("ascii")

    def fasta(items) -> str:
        return "".join(fasta_record(name, packed[int(plan.offsets[r]) + s:int(plan.offsets[r]) + e], width)
                       for name, r, s, e in items)

    files["viral_sequences.fna"] = fasta((ids[r], r, 0, int(plan.lengths[r]))
                                         for r in np.flatnonzero(calls.label == vcalls.VIRUS).tolist())
    files["viral_regions.fna"] = fasta(partial)
    return files


IDS = ["plain", "é_ünïcode", "#hash", "track7", "browser", "%25", "a;b=c&d%e/f\"g'", "~tilde", "x" * 300, "t", "e"]


@pytest.mark.parametrize("width", [1, 7, 60, 10 ** 9])
def test_tables_equal_the_per_row_writers(tmp_path, width, monkeypatch):
    """Odd IDs (non-ASCII, escaped in GFF3 and BED, one far wider than the rest), records from empty
    to several chunks, filtered ones, chunks without frames, FASTA widths from 1 to unwrapped; small
    blocks so that rows are split over many."""
    monkeypatch.setattr(text, "CELLS", 2000)
    rng = np.random.default_rng(3)
    lengths = [0, 1, 120, 499, 500, 501, 1200, 2600, 90, 9000, 777, 6001] * 3
    fasta = tmp_path / "in.fa"
    with open(fasta, "w", encoding="utf-8") as fh:
        for k, n in enumerate(lengths):
            letters = "".join(rng.choice(list("ACGTNacgt"), n))
            fh.write(f">{IDS[k % len(IDS)]}{'' if k < len(IDS) else k}\n{letters}\n")
    work = tmp_path / "out" / "work"
    pack_inputs([fasta], work)
    config = PredictConfig()
    config = replace(config, filter=replace(config.filter, min_length=100), tables=replace(config.tables,
                                                                                            fasta_width=width,
                                                                                            highestscore_scores=True))
    plan = load_plan(work, 500, asdict(config.filter))
    chunk_keys = [np.sort(rng.choice(6, rng.integers(0, 4), replace=False)) + 6 * c for c in range(plan.n_chunks)]
    keys = np.concatenate(chunk_keys).astype(np.int64)
    stretch = (keys // 6 // 5) % 2 == 0  # viral and not in turns of five chunks: partial regions
    virus = np.where(stretch, rng.uniform(0.7, 1, len(keys)), rng.uniform(0, 0.3, len(keys))).astype(np.float32)
    virus[::17] = 1.0
    scores = np.stack([1 - virus, virus], axis=1).astype(np.float32)
    write_tables(tmp_path / "out", plan, keys, scores, config, ["in.fa"], work=work)
    results = compute_results(plan, keys, scores, config, ["in.fa"], work)
    assert (results.calls.label == vcalls.VIRUS).any() and (~results.whole).any()
    assert (results.regions.start % 2).any()  # a region that starts at an odd 0-based base too
    for name, expected in old_tables(results, plan, work, keys, scores, width, config.filter).items():
        assert (tmp_path / "out" / name).read_text(encoding="utf-8") == expected, name
