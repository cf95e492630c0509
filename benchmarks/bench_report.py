"""Report size and time for a large run: 1,000,000 contigs (targets: < 5 MB, < 10 s).

    python -m benchmarks.bench_report [--contigs 1000000]

The output folder is synthetic but follows the files' contract (contigs.tsv, chunks.tsv,
regions.tsv, summary.tsv, run.json with calls, progress and per-rank timings): `synthetic_out`
writes it, vectorised, and the tests use it at small sizes. The baseline measured in the same run
is the report of a 1,000-contig folder: the ratio shows how size and time grow with the run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

CHUNK = 500
STEP = 250
INPUTS = ("reads_a.fa", "reads_b.fa.gz", "contigs_c.fa")
MIN_SCORE, MIN_FRACTION = 0.6, 0.5  # call.min_score, call.min_fraction


def _fmt(values: np.ndarray) -> list[str]:
    return ["NA" if np.isnan(v) else f"{v:.6f}" for v in values.tolist()]


def synthetic_out(out: Path, n_contigs: int, seed: int = 0, world_size: int = 4) -> dict:
    """Write a finished run's OUT folder with `n_contigs` sequences; returns its key numbers."""
    from vnp.support.config import PredictConfig, to_yaml

    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    n_chunks = rng.integers(1, 6, n_contigs)  # chunks per contig
    lengths = np.where(n_chunks == 1, rng.integers(100, CHUNK + 1, n_contigs),
                       (n_chunks - 1) * STEP + CHUNK - rng.integers(0, STEP, n_contigs))
    viral_bias = rng.beta(0.5, 2.0, n_contigs)
    contig_of = np.repeat(np.arange(n_contigs), n_chunks)
    first = np.concatenate([[0], np.cumsum(n_chunks)[:-1]])
    number = np.arange(len(contig_of)) - first[contig_of]  # 0-based chunk number within its contig
    start = number * STEP + 1
    end = np.minimum(start + CHUNK - 1, lengths[contig_of])
    scored = rng.random(len(contig_of)) > 0.1
    score2 = np.where(scored, np.clip(viral_bias[contig_of] + rng.normal(0, 0.15, len(contig_of)), 0.001, 0.999),
                      np.nan)
    score1 = np.where(scored, np.clip(1 - score2 + rng.normal(0, 0.02, len(contig_of)), 0.001, 0.999), np.nan)
    chunk_viral = scored & (score2 >= score1) & (score2 >= MIN_SCORE)
    frames = np.where(scored, rng.integers(1, 7, len(contig_of)), 0)

    def per_contig(values: np.ndarray) -> np.ndarray:
        return np.bincount(contig_of, weights=values, minlength=n_contigs)

    with_frames = per_contig(scored.astype(float)).astype(int)
    viral = per_contig(chunk_viral.astype(float)).astype(int)
    empty = n_chunks - with_frames
    share = np.divide(viral, with_frames, out=np.full(n_contigs, np.nan), where=with_frames > 0)
    top = np.full(n_contigs, -np.inf)
    np.maximum.at(top, contig_of, np.nan_to_num(score2, nan=-np.inf))
    top[np.isinf(top)] = np.nan
    mean = np.divide(per_contig(np.nan_to_num(score2)), with_frames, out=np.full(n_contigs, np.nan),
                     where=with_frames > 0)
    label = np.where(with_frames == 0, "no_frames", np.where(share >= MIN_FRACTION, "virus", "others"))
    label[(lengths < 150) & (label != "no_frames")] = "filtered"
    confidence = np.where(label != "virus", "NA", np.where(top >= 0.9, "high", np.where(top >= 0.7, "medium", "low")))
    reason = np.where(label == "filtered", "shorter than 150 bp", "")
    ids = np.array([f"contig_{i}" for i in range(n_contigs)])
    inputs = np.array(INPUTS)[np.arange(n_contigs) * len(INPUTS) // max(1, n_contigs)]

    with open(out / "contigs.tsv", "w") as fh:
        fh.write("sequence_id\tinput\tlength\tchunks\tviral_chunks\tchunks_without_frames\tfraction_viral\t"
                 "max_virus_score\tmean_virus_score\tlabel\tconfidence\treason\n")
        fh.writelines(f"{r}\t{i}\t{n}\t{c}\t{v}\t{e}\t{s}\t{t}\t{m}\t{lab}\t{conf}\t{why}\n"
                      for r, i, n, c, v, e, s, t, m, lab, conf, why in zip(
                          ids.tolist(), inputs.tolist(), lengths.tolist(), n_chunks.tolist(), viral.tolist(),
                          empty.tolist(), _fmt(share), _fmt(top), _fmt(mean), label.tolist(), confidence.tolist(),
                          reason.tolist()))
    chunk_label = np.where(~scored, "no_frames", np.where(chunk_viral, "virus", "others"))
    with open(out / "chunks.tsv", "w") as fh:
        fh.write("chunk_id\tsequence_id\tstart\tend\tframes\tmax_score1\tmax_score2\tlabel\n")
        fh.writelines(f"{r}_chunk_{k + 1}\t{r}\t{s}\t{e}\t{f}\t{a}\t{b}\t{lab}\n" for r, k, s, e, f, a, b, lab in zip(
            ids[contig_of].tolist(), number.tolist(), start.tolist(), end.tolist(), frames.tolist(),
            _fmt(score1), _fmt(score2), chunk_label.tolist()))
    # one region per viral contig: from its first to its last viral chunk
    viral_rows = np.flatnonzero(chunk_viral & (label[contig_of] == "virus"))
    region_contigs, first_row = np.unique(contig_of[viral_rows], return_index=True)
    last_row = np.append(first_row[1:], len(viral_rows)) - 1
    r_start, r_end = start[viral_rows[first_row]], end[viral_rows[last_row]]
    r_chunks = last_row - first_row + 1
    r_mean = np.add.reduceat(score2[viral_rows], first_row) / r_chunks if len(first_row) else np.zeros(0)
    r_max = np.maximum.reduceat(score2[viral_rows], first_row) if len(first_row) else np.zeros(0)
    kind = np.where(r_chunks == n_chunks[region_contigs], "whole", "partial")
    with open(out / "regions.tsv", "w") as fh:
        fh.write("sequence_id\tregion_id\tstart\tend\tlength\tchunks\tmean_virus_score\tmax_virus_score\tkind\n")
        fh.writelines(f"{r}\t{r}_region_1\t{s}\t{e}\t{e - s + 1}\t{c}\t{m:.6f}\t{t:.6f}\t{k}\n"
                      for r, s, e, c, m, t, k in zip(ids[region_contigs].tolist(), r_start.tolist(), r_end.tolist(),
                                                     r_chunks.tolist(), r_mean.tolist(), r_max.tolist(), kind.tolist()))
    regions_per_contig = np.zeros(n_contigs, int)
    regions_per_contig[region_contigs] = 1
    summary = []
    for name in INPUTS + ("total",):
        mine = inputs == name if name != "total" else np.ones(n_contigs, bool)
        is_virus = mine & (label == "virus")
        summary.append({"input": name, "sequences": int(mine.sum()), "bp": int(lengths[mine].sum()),
                        "viral_sequences": int(is_virus.sum()), "viral_bp": int(lengths[is_virus].sum()),
                        "regions": int(regions_per_contig[mine].sum()),
                        "no_frames": int((mine & (label == "no_frames")).sum()),
                        "filtered": int((mine & (label == "filtered")).sum())})
    with open(out / "summary.tsv", "w") as fh:
        fh.write("\t".join(summary[0]) + "\n")
        fh.writelines("\t".join(str(v) for v in row.values()) + "\n" for row in summary)
    labels, found = np.unique(label, return_counts=True)
    counts = {"sequences": n_contigs, "chunks": len(contig_of), "frames": int(frames.sum()),
              "chunks_without_frames": int((~scored).sum()), "viral_chunks": int(chunk_viral.sum()),
              "viral_sequences": int((label == "virus").sum()), "labels": dict(zip(labels.tolist(), found.tolist()))}
    total_s = 60.0 + n_contigs / 500
    progress = [{"t_s": round(total_s * k / 999, 3), "chunks": int(len(contig_of) * k / 999),
                 "frames": int(counts["frames"] * (k / 999) ** 1.1)} for k in range(1000)]
    per_rank = [{"rank": r, "busy_s": round(total_s * (0.8 - 0.05 * r), 3), "wait_s": round(total_s * 0.05 * r, 3),
                 "loop_s": round(total_s * 0.95, 3), "peak_rss_mib": 2000.0 + 100 * r,
                 "frames": counts["frames"] // world_size} for r in range(world_size)]
    run = {"vnp": "0.1.0", "torch": "2.13.0+cpu",
           "models": {"name": "500", "chunk_length": CHUNK, "fingerprint": "ab" * 32},
           "inputs": [{"path": f"/data/{name}", "size": 1000 + i, "sha256": f"{i:x}" * 64,
                       "records": summary[i]["sequences"]} for i, name in enumerate(INPUTS)],
           "counts": counts, "chunk_length": CHUNK, "work_units": 4 + len(contig_of) // 128, "resumed_units": 3,
           "rejected_progress_parts": 1, "world_size": world_size, "launcher": "torchrun", "device": "cuda:0",
           "precision": "bf16", "timings_s": {"prepare_s": 5.0, "embed_loop_s": total_s * 0.95, "total_s": total_s,
                                              "per_rank": per_rank},
           "progress": progress,
           "calls": {"call": {"min_score": MIN_SCORE, "min_fraction": MIN_FRACTION, "high_margin": 0.5,
                              "high_chunks": 2, "medium_margin": 0.2},
                     "regions": {"switch_penalty": 3.0, "min_length": 0, "merge_gap": 0},
                     "filter": {"min_length": 150, "max_n_fraction": 1.0}, "written_by": "vnp predict"}}
    (out / "run.json").write_text(json.dumps(run, indent=2) + "\n")
    (out / "config.yaml").write_text(to_yaml(PredictConfig(pack="500", threads=8, precision="bf16")))
    return run


def timed_report(out: Path) -> tuple[float, float, int]:
    """Wall and CPU seconds of writing the report (CPU: what it costs on an idle core), and its bytes."""
    from vnp.results.report import write_report

    t0, c0 = time.perf_counter(), time.process_time()
    path = write_report(out)
    return time.perf_counter() - t0, time.process_time() - c0, path.stat().st_size


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--contigs", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        small, big = Path(tmp) / "small", Path(tmp) / "big"
        synthetic_out(small, 1000)
        t0 = time.perf_counter()
        run = synthetic_out(big, args.contigs)
        made_s = time.perf_counter() - t0
        base_s, base_cpu, base_size = timed_report(small)
        big_s, big_cpu, big_size = timed_report(big)
        print(f"report: {args.contigs:,} contigs, {run['counts']['chunks']:,} chunks "
              f"({(big / 'chunks.tsv').stat().st_size / 2**20:.0f} MiB chunks.tsv; generated in {made_s:.0f} s)")
        print(f"report: {big_size / 1e6:.2f} MB written in {big_s:.1f} s ({big_cpu:.1f} s CPU) (targets < 5 MB, "
              f"< 10 s); 1,000 contigs: {base_size / 1e6:.2f} MB in {base_s:.1f} s ({base_cpu:.1f} s CPU)")
        print(f"report: ratio size {big_size / base_size:.2f}x, time {big_s / base_s:.1f}x for "
              f"{args.contigs / 1000:,.0f}x the contigs")


if __name__ == "__main__":
    main()
