"""The result tables, written by rank 0 from frame keys and scores in input order.

* `prediction_results.txt`: the original's per-frame table (scores printed as the original
  printed its float32 values, e.g. `0.12100612`).
* `prediction_results_highestscore.csv`: the original's per-chunk call (tab-separated despite its
  name): `True` when the chunk's highest virus score >= its highest non-virus score.
* `chunks.tsv`, `contigs.tsv`: every chunk and every sequence, including those without a
  stop-free frame; derived scores with 6 decimals.

A frame's key is `chunk * 6 + frame` (F1..R3 = 0..5), so sorting keys gives the input order.
All formatting is fixed, so the tables are byte-identical for any world size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from vnp.plan import ChunkPlan
from vnp.translate import FRAME_NAMES

FILES = ("prediction_results.txt", "prediction_results_highestscore.csv", "chunks.tsv", "contigs.tsv")


@dataclass
class TableCounts:
    sequences: int = 0
    chunks: int = 0
    frames: int = 0
    chunks_without_frames: int = 0
    viral_chunks: int = 0
    viral_sequences: int = 0
    labels: dict = field(default_factory=dict)


def _fixed(value: float) -> str:
    return f"{value:.6f}"


def _chunk_rows(plan: ChunkPlan, record: int, rid: str) -> list[tuple[int, str, int, int]]:
    """(global chunk, chunk id, 1-based start, end) of one record."""
    first, last = int(plan.first_chunk[record]), int(plan.first_chunk[record + 1])
    return [(c, f"{rid}_chunk_{number}", start + 1, end)
            for c, _, number, start, end in plan.spans(first, last)]


def write_tables(out: Path, plan: ChunkPlan, ids: Iterable[str], keys: np.ndarray, scores: np.ndarray) -> TableCounts:
    """Write the four tables (to temporary names, renamed at the end); `keys` sorted ascending."""
    chunk_of = keys // 6
    bounds = np.searchsorted(chunk_of, np.arange(plan.n_chunks + 1))  # frames of chunk c: bounds[c]:bounds[c+1]
    counts = TableCounts()
    tmp = {name: out / (name + ".tmp") for name in FILES}
    handles = {name: open(path, "w", encoding="utf-8") for name, path in tmp.items()}
    try:
        frames_out, best_out, chunks_out, contigs_out = (handles[n] for n in FILES)
        frames_out.write("Sequence_ID\tPrediction\tscore1\tscore2\n")
        best_out.write("Modified_ID\tIs_Virus\n")
        chunks_out.write("chunk_id\tsequence_id\tstart\tend\tframes\tmax_score1\tmax_score2\tlabel\n")
        contigs_out.write("sequence_id\tlength\tchunks\tviral_chunks\tchunks_without_frames\tfraction_viral\t"
                          "max_virus_score\tmean_virus_score\tlabel\n")
        for record, rid in enumerate(ids):
            virus_maxima = []
            viral = empty = 0
            rows = _chunk_rows(plan, record, rid)
            for c, cid, start, end in rows:
                lo, hi = int(bounds[c]), int(bounds[c + 1])
                # numpy's shortest float32 repr, as the original's str(np.float32); formatted per
                # chunk so no table of strings for all frames is ever held
                text = scores[lo:hi].astype(np.float32).astype(str)
                for i in range(lo, hi):
                    label = "virus" if scores[i, 1] > scores[i, 0] else "others"
                    frames_out.write(f"{cid}{FRAME_NAMES[keys[i] % 6]}\t{label}\t{text[i - lo, 0]}\t{text[i - lo, 1]}\n")
                if hi == lo:
                    empty += 1
                    chunks_out.write(f"{cid}\t{rid}\t{start}\t{end}\t0\tNA\tNA\tno_frames\n")
                    continue
                best = scores[lo:hi].max(axis=0)
                is_virus = bool(best[1] >= best[0])
                viral += is_virus
                virus_maxima.append(float(best[1]))
                best_out.write(f"{cid}\t{is_virus}\n")
                chunks_out.write(f"{cid}\t{rid}\t{start}\t{end}\t{hi - lo}\t{_fixed(best[0])}\t{_fixed(best[1])}\t"
                                 f"{'virus' if is_virus else 'others'}\n")
                counts.frames += int(hi - lo)
            contigs_out.write(_contig_row(rid, int(plan.lengths[record]), len(rows), viral, empty, virus_maxima, counts))
            counts.sequences += 1
            counts.chunks += len(rows)
            counts.chunks_without_frames += empty
            counts.viral_chunks += viral
    finally:
        for handle in handles.values():
            handle.close()
    if counts.sequences != plan.n_records:
        raise RuntimeError(f"tables: {counts.sequences} IDs for {plan.n_records} records in the index")
    if counts.frames != len(keys):
        raise RuntimeError(f"tables: wrote {counts.frames} frames of {len(keys)} scored")
    for name, path in tmp.items():
        os.replace(path, out / name)
    return counts


def _contig_row(rid: str, length: int, n_chunks: int, viral: int, empty: int, maxima: list[float],
                counts: TableCounts) -> str:
    """Per-sequence summary: the majority of its chunks with frames decides its label."""
    if not maxima:
        label, fraction, top, mean = "no_frames", "NA", "NA", "NA"
    else:
        share = viral / len(maxima)
        label = "virus" if share >= 0.5 else "others"
        fraction, top, mean = _fixed(share), _fixed(max(maxima)), _fixed(sum(maxima) / len(maxima))
    counts.labels[label] = counts.labels.get(label, 0) + 1
    counts.viral_sequences += label == "virus"
    return f"{rid}\t{length}\t{n_chunks}\t{viral}\t{empty}\t{fraction}\t{top}\t{mean}\t{label}\n"


def load_embeddings(out: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """All frame IDs and embeddings saved by `save_embeddings=true`, in input order.

    The parts in OUT/embeddings each hold `ids`, `keys` (chunk * 6 + frame) and `embeddings`
    (float32 [N, 3328]); they are plain .npz files readable with numpy.load(allow_pickle=False).
    """
    ids, keys, vectors = [], [], []
    for path in sorted((Path(out) / "embeddings").glob("part-*.npz")):
        with np.load(path, allow_pickle=False) as data:
            ids.append(data["ids"])
            keys.append(data["keys"])
            vectors.append(data["embeddings"])
    if not ids:
        return np.zeros(0, dtype=str), np.zeros((0, 0), np.float32)
    order = np.argsort(np.concatenate(keys), kind="stable")
    return np.concatenate(ids)[order], np.concatenate(vectors)[order]
