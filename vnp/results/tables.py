"""The result files, written by rank 0 (`vnp predict`) or by `vnp call` from committed scores.

* `prediction_results.txt`: the original's per-frame table (scores printed as the original
  printed its float32 values, e.g. `0.12100612`); written by `vnp predict` only.
* `prediction_results_highestscore.csv`: the original's per-chunk call (tab-separated despite its
  name): `True` when the chunk's highest virus score >= its highest non-virus score
  (`tables.highestscore_scores=true` adds the two maxima as max_score_0 and max_score_1).
* `chunks.tsv`, `contigs.tsv`: every chunk and every sequence, with the calls of `vnp.results.calls`;
  with `calibration=` also `virus_probability` (both) and `fdr` (contigs.tsv), from
  `vnp.results.calibration`. Without one these columns are absent.
* `regions.tsv`, `regions.bed`, `regions.gff3`: viral regions (`vnp.results.regions`).
* `viral_sequences.fna`, `viral_regions.fna`: letters of viral sequences and partial regions,
  read from the packed sequences in OUT/work.
* `summary.tsv`: per input and in total.

`write_results` writes everything but the per-frame table; `vnp predict` and `vnp call` both go
through it. Every file is written to a temporary name and renamed once all are complete (one
`vnp.support.atomic.AtomicFiles`, which the caller may pass to commit more files with them).
A frame's key is `chunk * 6 + frame` (F1..R3 = 0..5), so sorting keys gives the input order.
All formatting is fixed, so the files are byte-identical for any world size.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator
from urllib.parse import quote

import numpy as np

from vnp.results import calibration as vcal
from vnp.results import calls as vcalls
from vnp.seq.chunking import chunk_id
from vnp.seq.filters import reason
from vnp.run.plan import SEQUENCES, ChunkPlan, iter_ids
from vnp.results.regions import Regions, find_regions, region_scores, territories, viterbi
from vnp.run.folder import RunFolder
from vnp.support.atomic import AtomicFiles
from vnp.seq.frames import frame_id
from vnp.seq.seqio import fasta_record

FRAME_TABLE = "prediction_results.txt"
RESULT_FILES = ("prediction_results_highestscore.csv", "chunks.tsv", "contigs.tsv", "regions.tsv", "regions.bed",
                "regions.gff3", "viral_sequences.fna", "viral_regions.fna", "summary.tsv")
FILES = (FRAME_TABLE, *RESULT_FILES)

CONTIG_COLUMNS = ("sequence_id", "input", "length", "chunks", "viral_chunks", "chunks_without_frames",
                  "fraction_viral", "max_virus_score", "mean_virus_score", "label", "confidence", "reason",
                  "supporting_chunks", "margin", "regions")
REGION_COLUMNS = ("sequence_id", "region_id", "start", "end", "length", "chunks", "mean_virus_score",
                  "max_virus_score", "kind")
CALIBRATED_COLUMNS = ("virus_probability", "fdr")  # appended to contigs.tsv with a calibration
SUMMARY_COLUMNS = ("input", "sequences", "bp", "viral_sequences", "viral_bp", "regions", "no_frames", "filtered",
                   "region_bp")


@dataclass
class TableCounts:
    sequences: int = 0
    chunks: int = 0
    frames: int = 0
    chunks_without_frames: int = 0
    viral_chunks: int = 0
    viral_sequences: int = 0
    filtered: int = 0
    regions: int = 0
    labels: dict = field(default_factory=dict)


def settings_record(config, written_by: str) -> dict:
    """The settings behind the calls, for run.json's "calls" (filter: what was embedded; calibration:
    the file behind the probabilities, with its checksum)."""
    record = {name: asdict(getattr(config, name)) for name in ("call", "regions", "tables", "filter")}
    if config.calibration:
        record["calibration"] = vcal.file_record(vcal.load_calibration(config.calibration))
    return {**record, "written_by": written_by}


def input_names(inputs: list[dict]) -> list[str]:
    """The `input` column: each input's file name, or every input's full path when two share a name."""
    names = [Path(entry["path"]).name for entry in inputs]
    return names if len(set(names)) == len(names) else [str(entry["path"]) for entry in inputs]


def write_tables(out: Path, plan: ChunkPlan, keys: np.ndarray, scores: np.ndarray, config,
                 inputs: list[str], files: AtomicFiles | None = None, work: Path | None = None) -> TableCounts:
    """`vnp predict`: the per-frame table, then every other result file, within `files` (or
    committed together here); `keys` sorted ascending."""
    if files is None:
        with AtomicFiles() as files:
            return write_tables(out, plan, keys, scores, config, inputs, files, work)
    work = work or RunFolder(out).work
    with files.open(out / FRAME_TABLE) as fh:
        _write_frame_table(fh, plan, work, keys, scores)
    return write_results(out, plan, keys, scores, config, inputs, files, work)


def _write_frame_table(fh, plan: ChunkPlan, work: Path, keys: np.ndarray, scores: np.ndarray) -> None:
    if len(keys) and not 0 <= int(keys[0]) <= int(keys[-1]) < 6 * plan.n_chunks:
        raise RuntimeError(f"tables: scored frames beyond the plan's {plan.n_chunks} chunks")
    ids = np.array(list(iter_ids(work)), dtype=object)
    fh.write("Sequence_ID\tPrediction\tscore1\tscore2\n")
    for rows in _row_blocks(len(keys)):  # formatted a block at a time: no table of strings for all frames
        chunk = keys[rows] // 6
        first = np.searchsorted(chunk, chunk, side="left")  # each frame's first row of its chunk
        unique = np.flatnonzero(first == np.arange(len(chunk)))
        record = plan.record_of(chunk[unique])
        cids = list(map(chunk_id, ids[record].tolist(), (chunk[unique] - plan.first_chunk[record] + 1).tolist()))
        names = list(map(frame_id, [cids[i] for i in np.searchsorted(unique, first).tolist()], (keys[rows] % 6).tolist()))
        block = scores[rows]
        labels = np.where(block[:, 1] > block[:, 0], "virus", "others").tolist()
        head0, tail0 = float32_text_parts(block[:, 0])
        head1, tail1 = float32_text_parts(block[:, 1])
        fh.writelines(f"{n}\t{lab}\t{a}{b}\t{c}{d}\n" for n, lab, a, b, c, d in zip(names, labels, head0, tail0,
                                                                                      head1, tail1))


_POWERS = 10.0 ** np.arange(13)  # exact in float64
_DIGIT_LIMITS = 10 ** np.arange(1, 13, dtype=np.int64)
_LEADING = np.array(["0." + "0" * n for n in range(13)], dtype=object)


def float32_text_parts(values: np.ndarray) -> tuple[list, list]:
    """numpy's shortest float32 repr (`str(np.float32(v))`, as the original printed its scores)
    of every value, as two parts to print one after the other: (str, int or "").

    Values in [1e-4, 1) (classifier scores) are printed without numpy's per-value Dragon4: the
    shortest repr of x is the first k (decimal places) for which D = rint(x * 10^k) / 10^k rounds
    back to x in float32, i.e. lies between the midpoints to x's float32 neighbours (on a midpoint
    the even x wins). For k <= 12 every product is exact in float64 (24 + 28 bits), and the test
    is monotone in k, so k is found by bisection. Other values (0, 1, NaN, ...) take numpy's path.
    """
    x = np.asarray(values, dtype=np.float32)
    exact = x.astype(np.float64)
    fast = (exact >= 1e-4) & (exact < 1)  # compared as numpy does: float32(1e-4) < 1e-4 prints as 1e-04
    v, exact = x[fast], exact[fast]
    low = (exact + np.nextafter(v, np.float32(0)).astype(np.float64)) / 2
    high = (exact + np.nextafter(v, np.float32(1)).astype(np.float64)) / 2
    even = (v.view(np.uint32) & 1) == 0

    def rounded(k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scale = _POWERS[k]
        digits, a, b = np.rint(exact * scale), low * scale, high * scale
        return digits, ((digits > a) & (digits < b)) | (even & ((digits == a) | (digits == b)))

    fails, works = np.zeros(len(v), dtype=np.int64), np.full(len(v), 12, dtype=np.int64)
    while (open_ := works - fails > 1).any():
        middle = (fails + works) // 2
        ok = rounded(middle)[1]
        works, fails = np.where(open_ & ok, middle, works), np.where(open_ & ~ok, middle, fails)
    digits = rounded(works)[0].astype(np.int64)
    head = np.empty(len(x), dtype=object)
    head[fast] = _LEADING[works - 1 - np.searchsorted(_DIGIT_LIMITS, digits, side="right")]
    tail = np.full(len(x), "", dtype=object)
    tail[fast] = digits
    others = np.flatnonzero(~fast)
    head[others] = x[others].astype(str)
    return head.tolist(), tail.tolist()


@dataclass
class Results:
    """Everything `write_results` derives from the scores, before formatting."""

    ids: np.ndarray  # of str objects, in input order
    inputs: list[str]
    input_of: np.ndarray  # input index per record
    chunk_record: np.ndarray  # record of each chunk
    chunk_number: np.ndarray  # 1-based number of each chunk in its record
    chunks: vcalls.ChunkScores
    viral: np.ndarray  # chunk calls
    starts: np.ndarray
    ends: np.ndarray
    calls: vcalls.SequenceCalls
    regions: Regions
    whole: np.ndarray  # per region
    region_mean: np.ndarray
    region_max: np.ndarray
    regions_per_record: np.ndarray
    chunk_probability: np.ndarray | None = None  # with a calibration: P(virus) per chunk (NaN without frames)
    probability: np.ndarray | None = None  # ... per record (NaN without a scored chunk)
    fdr: np.ndarray | None = None  # ... estimated FDR per record called virus (NaN otherwise)


def compute_results(plan: ChunkPlan, keys: np.ndarray, scores: np.ndarray, config, inputs: list[str],
                    work: Path) -> Results:
    """Chunk and sequence calls and regions of every record (no file written)."""
    ids = list(iter_ids(work))
    if len(ids) != plan.n_records:
        raise RuntimeError(f"tables: {len(ids)} IDs for {plan.n_records} records in the index")
    if len(keys) and not 0 <= int(keys[0]) <= int(keys[-1]) < 6 * plan.n_chunks:
        raise RuntimeError(f"tables: scored frames beyond the plan's {plan.n_chunks} chunks")
    chunks = vcalls.chunk_scores(plan.n_chunks, keys, scores)
    call = config.call
    margins = vcalls.chunk_margins(chunks, call.min_score)
    viral = vcalls.chunk_viral(margins)
    chunk_p = record_p = called = fdr = None
    if config.calibration:
        chunk_p, record_p = vcal.probabilities(vcal.load_calibration(config.calibration), plan, chunks, call.prior)
        called = vcal.select_by_fdr(record_p, call.max_fdr) if call.max_fdr else None
    calls = vcalls.sequence_calls(plan, chunks, viral, margins, call.min_fraction, call.high_margin,
                                  call.high_chunks, call.medium_margin, called)
    if record_p is not None:
        fdr = vcal.estimated_fdr(record_p, calls.label == vcalls.VIRUS)
    starts, ends = plan.chunk_bounds()
    lo, hi = territories(starts, ends, plan.first_chunk, plan.lengths)
    decided = (calls.label == vcalls.VIRUS) | (calls.label == vcalls.OTHERS)
    states = viterbi(vcalls.chunk_log_odds(chunks, call.min_score), plan.first_chunk, decided,
                     config.regions.switch_penalty)
    regions = find_regions(states, plan.first_chunk, lo, hi, config.regions.merge_gap, config.regions.min_length)
    whole = (regions.start == 0) & (regions.end == plan.lengths[regions.record])
    # a region over the whole length stands only for a sequence the fraction rule calls viral
    keep = ~whole | (calls.label[regions.record] == vcalls.VIRUS)
    regions, whole = regions.take(keep), whole[keep]
    mean, top = region_scores(regions, chunks.max_virus, chunks.has_frames)
    record_of_chunk = np.repeat(np.arange(plan.n_records), np.diff(plan.first_chunk))
    numbers = np.arange(plan.n_chunks) - plan.first_chunk[record_of_chunk] + 1
    input_of = np.repeat(np.arange(len(plan.records_per_input)), plan.records_per_input)
    return Results(np.array(ids, dtype=object), inputs, input_of, record_of_chunk, numbers, chunks, viral, starts,
                   ends, calls, regions, whole, mean, top, np.bincount(regions.record, minlength=plan.n_records),
                   chunk_p, record_p, fdr)


def write_results(out: Path, plan: ChunkPlan, keys: np.ndarray, scores: np.ndarray, config, inputs: list[str],
                  files: AtomicFiles | None = None, work: Path | None = None) -> TableCounts:
    """Every result file but the per-frame table (`vnp predict` and `vnp call`), within `files`
    (or committed together here)."""
    if files is None:
        with AtomicFiles() as files:
            return write_results(out, plan, keys, scores, config, inputs, files, work)
    work = work or RunFolder(out).work
    results = compute_results(plan, keys, scores, config, inputs, work)
    writers = {
        "prediction_results_highestscore.csv":
            lambda fh: _highestscore(fh, results, config.tables.highestscore_scores),
        "chunks.tsv": lambda fh: _chunks(fh, results),
        "contigs.tsv": lambda fh: _contigs(fh, results, plan, config.filter),
        "regions.tsv": lambda fh: _regions_tsv(fh, results),
        "regions.bed": lambda fh: _regions_bed(fh, results),
        "regions.gff3": lambda fh: _regions_gff3(fh, results, plan),
        "viral_sequences.fna": lambda fh: _fasta(fh, _viral_sequences(results, plan), plan, work, config.tables.fasta_width),
        "viral_regions.fna": lambda fh: _fasta(fh, _partial_regions(results), plan, work, config.tables.fasta_width),
        "summary.tsv": lambda fh: _summary(fh, results, plan),
    }
    for name, write in writers.items():
        with files.open(out / name) as fh:
            write(fh)
    return _counts(results, plan, len(keys))


def _counts(results: Results, plan: ChunkPlan, frames: int) -> TableCounts:
    calls = results.calls
    labels, numbers = np.unique(vcalls.LABELS[calls.label], return_counts=True)
    return TableCounts(sequences=plan.n_records, chunks=plan.n_chunks, frames=frames,
                       chunks_without_frames=int(plan.n_chunks - results.chunks.has_frames.sum()),
                       viral_chunks=int(results.viral.sum()), viral_sequences=int((calls.label == vcalls.VIRUS).sum()),
                       filtered=int((calls.label == vcalls.FILTERED).sum()), regions=len(results.regions),
                       labels={str(k): int(n) for k, n in zip(labels, numbers)})


BLOCK = 1 << 16  # rows formatted at a time: memory stays flat however many sequences


def _row_blocks(n: int) -> Iterator[slice]:
    for lo in range(0, n, BLOCK):
        yield slice(lo, min(lo + BLOCK, n))


def _fixed_column(values: np.ndarray) -> list[str]:
    """Six decimals per value (of its exact float value, float32 included); NaN -> NA."""
    text = list(map("%.6f".__mod__, values.tolist()))
    for i in np.flatnonzero(np.isnan(values)).tolist():
        text[i] = "NA"
    return text


def _chunk_ids(results: Results, rows: np.ndarray) -> list[str]:
    ids = results.ids
    return [chunk_id(ids[r], k) for r, k in zip(results.chunk_record[rows].tolist(),
                                                  results.chunk_number[rows].tolist())]


def _highestscore(fh, results: Results, with_scores: bool) -> None:
    chunks = results.chunks
    fh.write("Modified_ID\tIs_Virus" + ("\tmax_score_0\tmax_score_1" if with_scores else "") + "\n")
    with_frames = np.flatnonzero(chunks.has_frames)
    for block in _row_blocks(len(with_frames)):
        rows = with_frames[block]
        ids = _chunk_ids(results, rows)
        is_virus = (chunks.max_virus[rows] >= chunks.max_other[rows]).tolist()  # the original's rule, in float32
        if with_scores:  # printed like the per-frame table (numpy's shortest float32 repr)
            (h0, t0), (h1, t1) = float32_text_parts(chunks.max_other[rows]), float32_text_parts(chunks.max_virus[rows])
            fh.writelines(f"{c}\t{v}\t{a}{b}\t{x}{y}\n" for c, v, a, b, x, y in zip(ids, is_virus, h0, t0, h1, t1))
        else:
            fh.writelines(f"{c}\t{v}\n" for c, v in zip(ids, is_virus))


def _chunks(fh, results: Results) -> None:
    chunks, probability = results.chunks, results.chunk_probability
    extra = "" if probability is None else "\tvirus_probability"
    fh.write(f"chunk_id\tsequence_id\tstart\tend\tframes\tmax_score1\tmax_score2\tlabel{extra}\n")
    labels = np.array(["others", "virus", "no_frames"])
    for rows in _row_blocks(len(chunks.frames)):
        label = labels[np.where(chunks.has_frames[rows], results.viral[rows], 2)].tolist()
        seq_ids = [results.ids[r] for r in results.chunk_record[rows].tolist()]
        lines = (f"{c}\t{r}\t{start}\t{end}\t{n}\t{a}\t{b}\t{lab}" for c, r, start, end, n, a, b, lab in zip(
            _chunk_ids(results, np.arange(rows.start, rows.stop)), seq_ids, (results.starts[rows] + 1).tolist(),
            results.ends[rows].tolist(), chunks.frames[rows].tolist(), _fixed_column(chunks.max_other[rows]),
            _fixed_column(chunks.max_virus[rows]), label))
        if probability is None:
            fh.writelines(line + "\n" for line in lines)
        else:
            fh.writelines(f"{line}\t{p}\n" for line, p in zip(lines, _fixed_column(probability[rows])))


def _contigs(fh, results: Results, plan: ChunkPlan, filters) -> None:
    calls = results.calls
    calibrated = results.probability is not None
    fh.write("\t".join(CONTIG_COLUMNS + (CALIBRATED_COLUMNS if calibrated else ())) + "\n")
    filter_settings = asdict(filters)
    reasons = {r: reason(int(plan.filtered[r]), int(plan.lengths[r]), int(plan.n_bases[r]), filter_settings)
               for r in np.flatnonzero(calls.label == vcalls.FILTERED).tolist()}
    for rows in _row_blocks(plan.n_records):
        decided = calls.label[rows] <= vcalls.VIRUS
        support = np.where(decided, calls.support[rows].astype(str), "NA").tolist()
        why = [reasons.get(r, "") for r in range(rows.start, rows.stop)]
        inputs = [results.inputs[i] for i in results.input_of[rows].tolist()]
        columns = [results.ids[rows], inputs, plan.lengths[rows].tolist(), calls.chunks[rows].tolist(),
                   calls.viral_chunks[rows].tolist(), (calls.chunks - calls.with_frames)[rows].tolist(),
                   _fixed_column(calls.fraction[rows]), _fixed_column(calls.max_virus[rows]),
                   _fixed_column(calls.mean_virus[rows]), vcalls.LABELS[calls.label[rows]].tolist(),
                   vcalls.CONFIDENCE[calls.confidence[rows]].tolist(), why, support,
                   _fixed_column(calls.margin[rows]), results.regions_per_record[rows].tolist()]
        if calibrated:
            columns += [_fixed_column(results.probability[rows]), _fixed_column(results.fdr[rows])]
        fh.writelines("\t".join(map(str, row)) + "\n" for row in zip(*columns))


@dataclass
class _RegionBlock:
    record: list[int]
    seq_ids: list[str]
    names: list[str]  # `<seq>|region_<start>_<end>`, 1-based inclusive
    start: list[int]  # 0-based
    end: list[int]
    chunks: list[int]
    mean: list[str]
    top: list[str]
    mean_values: np.ndarray
    whole: list[bool]


def _region_blocks(results: Results) -> Iterator[_RegionBlock]:
    regions = results.regions
    for rows in _row_blocks(len(regions)):
        record, start, end = regions.record[rows].tolist(), regions.start[rows].tolist(), regions.end[rows].tolist()
        seq_ids = [results.ids[r] for r in record]
        yield _RegionBlock(record, seq_ids, [f"{i}|region_{s + 1}_{e}" for i, s, e in zip(seq_ids, start, end)],
                           start, end, (regions.last[rows] - regions.first[rows] + 1).tolist(),
                           _fixed_column(results.region_mean[rows]), _fixed_column(results.region_max[rows]),
                           results.region_mean[rows], results.whole[rows].tolist())


def _regions_tsv(fh, results: Results) -> None:
    fh.write("\t".join(REGION_COLUMNS) + "\n")
    for b in _region_blocks(results):
        fh.writelines(f"{i}\t{name}\t{s + 1}\t{e}\t{e - s}\t{n}\t{mean}\t{top}\t{'whole' if whole else 'partial'}\n"
                      for i, name, s, e, n, mean, top, whole in zip(b.seq_ids, b.names, b.start, b.end, b.chunks,
                                                                     b.mean, b.top, b.whole))


BED_HEADER_STARTS = ("#", "track", "browser", "%")  # BED readers skip lines starting with the first three


def bed_chrom(seq_id: str) -> str:
    """A sequence ID as regions.bed's first column: an ID that a BED reader would take for a comment
    or header line (starting with `#`, `track` or `browser`), or that starts with `%`, has its
    first character written as `%` and two hex digits (`#a` -> `%23a`, `track1` -> `%74rack1`,
    `%x` -> `%25x`). Every other ID is written as it is, so a first column that starts with `%`
    is always escaped: decode its first three characters."""
    if seq_id.startswith(BED_HEADER_STARTS):
        return f"%{ord(seq_id[0]):02X}{seq_id[1:]}"
    return seq_id


def _regions_bed(fh, results: Results) -> None:
    """BED6: 0-based half-open, score = round(1000 * mean virus score); chrom by `bed_chrom`."""
    for b in _region_blocks(results):
        scores = np.clip(np.round(1000 * b.mean_values), 0, 1000).astype(np.int64).tolist()
        fh.writelines(f"{bed_chrom(i)}\t{s}\t{e}\t{name}\t{score}\t.\n"
                      for i, s, e, name, score in zip(b.seq_ids, b.start, b.end, b.names, scores))


# GFF3: characters column 1 may hold unescaped; attribute values must escape ;=&, tabs and %
_SEQID_SAFE = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.:^*$@!+_?-|"
_VALUE_SAFE = _SEQID_SAFE + "/#'\"()[]{}<>~` "
_SEQID_UNSAFE = re.compile("[^" + re.escape(_SEQID_SAFE) + "]")
_VALUE_UNSAFE = re.compile("[^" + re.escape(_VALUE_SAFE) + "]")


def _escape(text: str, unsafe: re.Pattern, safe: str) -> str:
    return quote(text, safe=safe) if unsafe.search(text) else text  # quote() only when needed: it is slow


def _regions_gff3(fh, results: Results, plan: ChunkPlan) -> None:
    """GFF3: one `viral_sequence` (SO:0001041) feature per region, 1-based inclusive, score = mean
    virus score, a ##sequence-region line before each sequence's first feature."""
    fh.write("##gff-version 3\n")
    previous = None
    for b in _region_blocks(results):
        for r, i, name, s, e, n, mean, top, whole in zip(b.record, b.seq_ids, b.names, b.start, b.end, b.chunks,
                                                         b.mean, b.top, b.whole):
            seqid = _escape(i, _SEQID_UNSAFE, _SEQID_SAFE)
            if r != previous:
                fh.write(f"##sequence-region {seqid} 1 {int(plan.lengths[r])}\n")
                previous = r
            fh.write(f"{seqid}\tvnp\tviral_sequence\t{s + 1}\t{e}\t{mean}\t.\t.\t"
                     f"ID={_escape(name, _VALUE_UNSAFE, _VALUE_SAFE)};kind={'whole' if whole else 'partial'};"
                     f"chunks={n};max_virus_score={top}\n")


def _viral_sequences(results: Results, plan: ChunkPlan) -> Iterator[tuple[str, int, int, int]]:
    for r in np.flatnonzero(results.calls.label == vcalls.VIRUS).tolist():
        yield results.ids[r], r, 0, int(plan.lengths[r])


def _partial_regions(results: Results) -> Iterator[tuple[str, int, int, int]]:
    for b in _region_blocks(results):
        for name, r, s, e, whole in zip(b.names, b.record, b.start, b.end, b.whole):
            if not whole:
                yield name, r, s, e


def _fasta(fh, records: Iterator[tuple[str, int, int, int]], plan: ChunkPlan, work: Path, width: int) -> None:
    """(FASTA ID, record, 0-based start, end) -> records, letters read from the packed sequences."""
    with open(work / SEQUENCES, "rb") as packed:
        for name, r, start, end in records:
            letters = os.pread(packed.fileno(), end - start, int(plan.offsets[r]) + start).decode("ascii")
            fh.write(fasta_record(name, letters, width))


def _summary(fh, results: Results, plan: ChunkPlan) -> None:
    calls, regions = results.calls, results.regions
    n_inputs = len(results.inputs)

    def per_input(weights=None, mask=None, of=None) -> list[int]:
        of = results.input_of if of is None else of
        if mask is not None:
            of, weights = of[mask], (None if weights is None else weights[mask])
        return np.bincount(of, weights=weights, minlength=n_inputs).astype(np.int64).tolist()

    virus = calls.label == vcalls.VIRUS
    region_input = results.input_of[regions.record]
    columns = [per_input(), per_input(plan.lengths), per_input(mask=virus), per_input(plan.lengths, virus),
               per_input(of=region_input), per_input(mask=calls.label == vcalls.NO_FRAMES),
               per_input(mask=calls.label == vcalls.FILTERED),
               per_input(regions.end - regions.start, of=region_input)]
    fh.write("\t".join(SUMMARY_COLUMNS) + "\n")
    for i, name in enumerate(results.inputs):
        fh.write("\t".join([name, *(str(column[i]) for column in columns)]) + "\n")
    fh.write("\t".join(["total", *(str(sum(column)) for column in columns)]) + "\n")


def load_embeddings(out: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """All frame IDs and embeddings saved by `save_embeddings=true`, in input order.

    The parts in OUT/embeddings each hold `ids`, `keys` (chunk * 6 + frame) and `embeddings`
    (float32 [N, 3328]); they are plain .npz files readable with numpy.load(allow_pickle=False).
    """
    ids, keys, vectors = [], [], []
    for path in sorted(RunFolder(out).embeddings.glob("part-*.npz")):
        with np.load(path, allow_pickle=False) as data:
            ids.append(data["ids"])
            keys.append(data["keys"])
            vectors.append(data["embeddings"])
    if not ids:
        return np.zeros(0, dtype=str), np.zeros((0, 0), np.float32)
    order = np.argsort(np.concatenate(keys), kind="stable")
    return np.concatenate(ids)[order], np.concatenate(vectors)[order]
