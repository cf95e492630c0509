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
from vnp.seq.chunking import CHUNK_SEP
from vnp.seq.filters import reason
from vnp.run.plan import IDS, SEQUENCES, ChunkPlan
from vnp.results.regions import Regions, find_regions, region_scores, territories, viterbi
from vnp.run.folder import RunFolder
from vnp.support.atomic import AtomicFiles
from vnp.results import text
from vnp.results.text import IdText
from vnp.seq.frames import FRAME_NAMES

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
    results = compute_results(plan, keys, scores, config, inputs, work)
    with files.open(out / FRAME_TABLE, "wb") as fh:
        _write_frame_table(fh, plan, results.ids, keys, scores)
    return _write_result_files(out, results, plan, len(keys), config, files, work)


def check_keys(keys: np.ndarray, plan: ChunkPlan) -> None:
    """Sorted frame keys must lie within the plan (6 frames a chunk): scores of another run are refused."""
    if len(keys) and not 0 <= int(keys[0]) <= int(keys[-1]) < 6 * plan.n_chunks:
        raise RuntimeError(f"tables: scored frames beyond the plan's {plan.n_chunks} chunks")


def _write_frame_table(fh, plan: ChunkPlan, ids: IdText, keys: np.ndarray, scores: np.ndarray) -> None:
    """Keys checked against the plan by `compute_results`."""
    fh.write(b"Sequence_ID\tPrediction\tscore1\tscore2\n")
    for rows in text.blocks(len(keys), lambda s: ids.lengths[plan.record_of(keys[s] // 6)]):
        chunk = keys[rows] // 6  # formatted a block at a time: no table of strings for all frames
        record = plan.record_of(chunk)
        block = scores[rows]
        fh.write(text.lines([*_chunk_id(ids.column(record), chunk - plan.first_chunk[record] + 1),
                             text.choice(_FRAME_NAMES, keys[rows] % 6), b"\t",
                             text.choice((b"others", b"virus"), block[:, 1] > block[:, 0]), b"\t",
                             text.float32_shortest(block[:, 0]), b"\t", text.float32_shortest(block[:, 1])],
                            len(chunk)))


_FRAME_NAMES = tuple(name.encode() for name in FRAME_NAMES)  # frames.frame_id: the chunk ID and these


def _chunk_id(seq_id: np.ndarray, number: np.ndarray) -> list:
    """Columns of `chunking.chunk_id` of each row (`{record_id}_chunk_{number}`), after `seq_id`."""
    return [seq_id, CHUNK_SEP.encode(), text.ints(number)]


@dataclass
class Results:
    """Everything `write_results` derives from the scores, before formatting."""

    ids: IdText  # in input order
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
    ids = IdText.read(work / IDS, plan.id_offsets)
    check_keys(keys, plan)
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
    return Results(ids, inputs, input_of, record_of_chunk, numbers, chunks, viral, starts,
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
    return _write_result_files(out, compute_results(plan, keys, scores, config, inputs, work), plan, len(keys),
                               config, files, work)


def _write_result_files(out: Path, results: Results, plan: ChunkPlan, frames: int, config, files: AtomicFiles,
                        work: Path) -> TableCounts:
    writers = {
        "prediction_results_highestscore.csv":
            lambda fh: _highestscore(fh, results, config.tables.highestscore_scores),
        "chunks.tsv": lambda fh: _chunks(fh, results),
        "contigs.tsv": lambda fh: _contigs(fh, results, plan, config.filter),
        "regions.tsv": lambda fh: _regions_tsv(fh, results),
        "regions.bed": lambda fh: _regions_bed(fh, results),
        "regions.gff3": lambda fh: _regions_gff3(fh, results, plan),
        "viral_sequences.fna":
            lambda fh: _fasta(fh, results, _viral_sequences(results, plan), plan, work, config.tables.fasta_width),
        "viral_regions.fna":
            lambda fh: _fasta(fh, results, _partial_regions(results), plan, work, config.tables.fasta_width),
        "summary.tsv": lambda fh: _summary(fh, results, plan),
    }
    for name, write in writers.items():
        with files.open(out / name, "wb") as fh:
            write(fh)
    return _counts(results, plan, frames)


def _counts(results: Results, plan: ChunkPlan, frames: int) -> TableCounts:
    calls = results.calls
    labels, numbers = np.unique(vcalls.LABELS[calls.label], return_counts=True)
    return TableCounts(sequences=plan.n_records, chunks=plan.n_chunks, frames=frames,
                       chunks_without_frames=int(plan.n_chunks - results.chunks.has_frames.sum()),
                       viral_chunks=int(results.viral.sum()), viral_sequences=int((calls.label == vcalls.VIRUS).sum()),
                       filtered=int((calls.label == vcalls.FILTERED).sum()), regions=len(results.regions),
                       labels={str(k): int(n) for k, n in zip(labels, numbers)})


def _ascii(strings: np.ndarray) -> tuple[bytes, ...]:
    return tuple(str(value).encode("ascii") for value in strings)


_CHUNK_LABELS = (b"others", b"virus", b"no_frames")
_KINDS = (b"partial", b"whole")


def _highestscore(fh, results: Results, with_scores: bool) -> None:
    chunks, ids = results.chunks, results.ids
    fh.write(b"Modified_ID\tIs_Virus" + (b"\tmax_score_0\tmax_score_1" if with_scores else b"") + b"\n")
    with_frames = np.flatnonzero(chunks.has_frames)
    for block in text.blocks(len(with_frames), lambda s: ids.lengths[results.chunk_record[with_frames[s]]]):
        rows = with_frames[block]
        parts = [*_chunk_id(ids.column(results.chunk_record[rows]), results.chunk_number[rows]), b"\t",
                 text.choice((b"False", b"True"), chunks.max_virus[rows] >= chunks.max_other[rows])]  # in float32
        if with_scores:  # printed like the per-frame table (numpy's shortest float32 repr)
            parts += [b"\t", text.float32_shortest(chunks.max_other[rows]), b"\t",
                      text.float32_shortest(chunks.max_virus[rows])]
        fh.write(text.lines(parts, len(rows)))


def _chunks(fh, results: Results) -> None:
    chunks, probability, ids = results.chunks, results.chunk_probability, results.ids
    extra = b"" if probability is None else b"\tvirus_probability"
    fh.write(b"chunk_id\tsequence_id\tstart\tend\tframes\tmax_score1\tmax_score2\tlabel" + extra + b"\n")
    for rows in text.blocks(len(chunks.frames), lambda s: 2 * ids.lengths[results.chunk_record[s]]):
        record = results.chunk_record[rows]
        seq_id = ids.column(record)
        parts = [*_chunk_id(seq_id, results.chunk_number[rows]), b"\t", seq_id, b"\t",
                 text.ints(results.starts[rows] + 1), b"\t", text.ints(results.ends[rows]), b"\t",
                 text.ints(chunks.frames[rows]), b"\t", text.fixed(chunks.max_other[rows]), b"\t",
                 text.fixed(chunks.max_virus[rows]), b"\t",
                 text.choice(_CHUNK_LABELS, np.where(chunks.has_frames[rows], results.viral[rows], 2))]
        if probability is not None:
            parts += [b"\t", text.fixed(probability[rows])]
        fh.write(text.lines(parts, rows.stop - rows.start))


def _contigs(fh, results: Results, plan: ChunkPlan, filters) -> None:
    calls, ids = results.calls, results.ids
    calibrated = results.probability is not None
    fh.write(("\t".join(CONTIG_COLUMNS + (CALIBRATED_COLUMNS if calibrated else ())) + "\n").encode())
    filter_settings = asdict(filters)
    filtered = np.flatnonzero(calls.label == vcalls.FILTERED)
    names = tuple(name.encode("utf-8") for name in results.inputs)
    labels, confidence = _ascii(vcalls.LABELS), _ascii(vcalls.CONFIDENCE)
    for rows in text.blocks(plan.n_records, lambda s: ids.lengths[s]):
        n = rows.stop - rows.start
        undecided = np.flatnonzero(calls.label[rows] > vcalls.VIRUS)
        support = text.with_texts(text.ints(np.where(calls.label[rows] > vcalls.VIRUS, 0, calls.support[rows])),
                                  undecided, [b"NA"] * len(undecided))
        mine = filtered[np.searchsorted(filtered, rows.start):np.searchsorted(filtered, rows.stop)]
        why = text.with_texts(np.zeros((n, 1), np.uint8), mine - rows.start,
                              [reason(int(plan.filtered[r]), int(plan.lengths[r]), int(plan.n_bases[r]),
                                      filter_settings).encode() for r in mine.tolist()])
        parts = [ids.column(np.arange(rows.start, rows.stop)), b"\t", text.choice(names, results.input_of[rows]), b"\t",
                 text.ints(plan.lengths[rows]), b"\t", text.ints(calls.chunks[rows]), b"\t",
                 text.ints(calls.viral_chunks[rows]), b"\t", text.ints((calls.chunks - calls.with_frames)[rows]), b"\t",
                 text.fixed(calls.fraction[rows]), b"\t", text.fixed(calls.max_virus[rows]), b"\t",
                 text.fixed(calls.mean_virus[rows]), b"\t", text.choice(labels, calls.label[rows]), b"\t",
                 text.choice(confidence, calls.confidence[rows]), b"\t", why, b"\t", support, b"\t",
                 text.fixed(calls.margin[rows]), b"\t", text.ints(results.regions_per_record[rows])]
        if calibrated:
            parts += [b"\t", text.fixed(results.probability[rows]), b"\t", text.fixed(results.fdr[rows])]
        fh.write(text.lines(parts, n))


def _region_blocks(results: Results) -> Iterator[slice]:
    return text.blocks(len(results.regions), lambda s: 2 * results.ids.lengths[results.regions.record[s]])


def _region_name(seq_id: np.ndarray, regions: Regions, rows: slice) -> list:
    """Columns of a region's name, `<seq>|region_<start>_<end>` (1-based inclusive), after `seq_id`."""
    return [seq_id, b"|region_", text.ints(regions.start[rows] + 1), b"_", text.ints(regions.end[rows])]


def _regions_tsv(fh, results: Results) -> None:
    regions = results.regions
    fh.write(("\t".join(REGION_COLUMNS) + "\n").encode())
    for rows in _region_blocks(results):
        seq_id = results.ids.column(regions.record[rows])
        fh.write(text.lines([seq_id, b"\t", *_region_name(seq_id, regions, rows), b"\t",
                             text.ints(regions.start[rows] + 1), b"\t", text.ints(regions.end[rows]), b"\t",
                             text.ints(regions.end[rows] - regions.start[rows]), b"\t",
                             text.ints(regions.last[rows] - regions.first[rows] + 1), b"\t",
                             text.fixed(results.region_mean[rows]), b"\t", text.fixed(results.region_max[rows]), b"\t",
                             text.choice(_KINDS, results.whole[rows])], rows.stop - rows.start))


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


def _escaped(ids: IdText, records: np.ndarray, needed: np.ndarray, escape) -> np.ndarray:
    """The ID column of `records`, where `needed[record]` each ID as `escape(ID)` (Python, the few)."""
    rows = np.flatnonzero(needed[records])
    return text.with_texts(ids.column(records), rows, [escape(ids.text(r)).encode() for r in records[rows].tolist()])


def _regions_bed(fh, results: Results) -> None:
    """BED6: 0-based half-open, score = round(1000 * mean virus score); chrom by `bed_chrom`."""
    regions, ids = results.regions, results.ids
    header_like = ids.starts_with([start.encode() for start in BED_HEADER_STARTS])
    for rows in _region_blocks(results):
        record = regions.record[rows]
        scores = np.clip(np.round(1000 * results.region_mean[rows]), 0, 1000).astype(np.int64)
        fh.write(text.lines([_escaped(ids, record, header_like, bed_chrom), b"\t", text.ints(regions.start[rows]),
                             b"\t", text.ints(regions.end[rows]), b"\t",
                             *_region_name(ids.column(record), regions, rows), b"\t", text.ints(scores), b"\t."],
                            len(record)))


# GFF3: characters column 1 may hold unescaped; attribute values must escape ;=&, tabs and %
_SEQID_SAFE = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.:^*$@!+_?-|"
_VALUE_SAFE = _SEQID_SAFE + "/#'\"()[]{}<>~` "
_SEQID_UNSAFE = re.compile("[^" + re.escape(_SEQID_SAFE) + "]")
_VALUE_UNSAFE = re.compile("[^" + re.escape(_VALUE_SAFE) + "]")


def _unsafe_bytes(safe: str) -> np.ndarray:
    """Bytes of UTF-8 text outside `safe` (every byte of a non-ASCII character)."""
    table = np.ones(256, dtype=bool)
    table[np.frombuffer(safe.encode("ascii"), np.uint8)] = False
    return table


def _escape(text: str, unsafe: re.Pattern, safe: str) -> str:
    return quote(text, safe=safe) if unsafe.search(text) else text  # quote() only when needed: it is slow


def _regions_gff3(fh, results: Results, plan: ChunkPlan) -> None:
    """GFF3: one `viral_sequence` (SO:0001041) feature per region, 1-based inclusive, score = mean
    virus score, a ##sequence-region line before each sequence's first feature. A region's ID is
    its name escaped, i.e. the escaped sequence ID and `|region_<start>_<end>` (safe characters)."""
    regions, ids = results.regions, results.ids
    seqid_unsafe, value_unsafe = ids.any_byte(_unsafe_bytes(_SEQID_SAFE)), ids.any_byte(_unsafe_bytes(_VALUE_SAFE))
    first = np.ones(len(regions), dtype=bool)  # each sequence's first region
    first[1:] = regions.record[1:] != regions.record[:-1]
    fh.write(b"##gff-version 3\n")
    for rows in _region_blocks(results):
        record, n = regions.record[rows], rows.stop - rows.start
        seqid = _escaped(ids, record, seqid_unsafe, lambda i: _escape(i, _SEQID_UNSAFE, _SEQID_SAFE))
        value = _escaped(ids, record, value_unsafe, lambda i: _escape(i, _VALUE_UNSAFE, _VALUE_SAFE))
        features = text.line_matrix([
            seqid, b"\tvnp\tviral_sequence\t", text.ints(regions.start[rows] + 1), b"\t", text.ints(regions.end[rows]),
            b"\t", text.fixed(results.region_mean[rows]), b"\t.\t.\tID=", *_region_name(value, regions, rows),
            b";kind=", text.choice(_KINDS, results.whole[rows]), b";chunks=",
            text.ints(regions.last[rows] - regions.first[rows] + 1), b";max_virus_score=",
            text.fixed(results.region_max[rows])], n)
        heads = np.flatnonzero(first[rows])
        header = text.line_matrix([b"##sequence-region ", seqid[heads], b" 1 ", text.ints(plan.lengths[record[heads]])],
                                  len(heads))
        at = np.arange(n) + np.cumsum(first[rows])  # each feature's line, after the headers so far
        fh.write(text.joined(text.stacked(n + len(heads), [(at, features), (at[heads] - 1, header)])))


def _viral_sequences(results: Results, plan: ChunkPlan) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    record = np.flatnonzero(results.calls.label == vcalls.VIRUS)
    return record, np.zeros(len(record), np.int64), plan.lengths[record].astype(np.int64), False


def _partial_regions(results: Results) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    partial = results.regions.take(~results.whole)
    return partial.record, partial.start, partial.end, True


def _fasta(fh, results: Results, items: tuple[np.ndarray, np.ndarray, np.ndarray, bool], plan: ChunkPlan,
           work: Path, width: int) -> None:
    """(records, 0-based starts, ends, named as regions) -> FASTA records as `seqio.fasta_record`
    writes them, letters read from the packed sequences: a block of records at a time, every
    line of letters a row of up to `width` letters."""
    record, start, end, as_regions = items
    if not len(record):
        return
    ids, length = results.ids, end - start
    line_count = -(-length // width)
    packed = np.memmap(work / SEQUENCES, dtype=np.uint8, mode="r")
    for rows in text.blocks(len(record), lambda s: np.maximum(np.minimum(length[s], width), 2 * ids.lengths[record[s]]),
                            lambda s: line_count[s] + 1):
        r, n, counts = record[rows], rows.stop - rows.start, line_count[rows]
        name = ids.column(r)
        header = text.line_matrix([b">", *(_region_name(name, Regions(r, r, r, start[rows], end[rows]), slice(None))
                                           if as_regions else [name])], n)
        before = np.cumsum(counts) - counts  # lines of letters before each record's
        item = np.repeat(np.arange(n), counts)
        line = np.arange(int(counts.sum())) - before[item]  # each line's number in its record
        first = plan.offsets[r][item] + start[rows][item] + line * width
        letters = text.line_matrix([text.windows(packed, first, np.minimum(width, length[rows][item] - line * width))],
                                   len(item))
        at = np.arange(n) + before  # each header's line
        fh.write(text.joined(text.stacked(n + len(item), [(at, header), (np.arange(len(item)) + item + 1, letters)])))


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
    lines = ["\t".join(SUMMARY_COLUMNS)]
    for i, name in enumerate(results.inputs):
        lines.append("\t".join([name, *(str(column[i]) for column in columns)]))
    lines.append("\t".join(["total", *(str(sum(column)) for column in columns)]))
    fh.write(("\n".join(lines) + "\n").encode("utf-8"))


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
