"""Sequence stage throughput: vnp's read+chunk+translate vs a per-codon dictionary baseline.

    python -m benchmarks.bench_translate [--mbp 20]

Both run single-threaded in this process on the same generated input (a mix of stop-free coding
stretches and random sequence, with some N and lower case). Peak memory of the vnp path is measured
in fresh subprocesses for two input sizes: it must not grow with the input.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests import baseline_translate as baseline
from vnp.demo import coding_like
from vnp.translate import translate_file


def generate_fasta(path: Path, mbp: float, seed: int = 0) -> int:
    """Write sequences of 150 bp - 20 kb, half coding-like (no stop in frame 1), half random."""
    rng = random.Random(seed)
    target, total, n = int(mbp * 1e6), 0, 0
    with open(path, "w") as fh:
        while total < target:
            length = rng.choice([150, 300, 500, 800, 1500, 5000, 20000])
            if n % 2:
                seq = coding_like(rng, length)
            else:
                seq = "".join(rng.choices("ACGT", k=length))
            if n % 7 == 0:
                seq = seq[:50] + "N" * 10 + seq[60:].lower()
            fh.write(f">seq{n} generated\n")
            fh.writelines(seq[i:i + 60] + "\n" for i in range(0, len(seq), 60))
            total += len(seq)
            n += 1
    return total


def run_baseline(path: Path, out: Path, L: int) -> None:
    """Read with a plain line loop, then chunk and translate codon by codon; write the same files."""
    def records():
        rid, parts = None, []
        for line in open(path):
            if line.startswith(">"):
                if rid is not None:
                    yield rid, "".join(parts)
                rid, parts = line[1:].split()[0], []
            else:
                parts.append(line.strip())
        if rid is not None:
            yield rid, "".join(parts)

    with open(out / "b_chunked.fa", "w") as c, open(out / "b_nt.fa", "w") as d, open(out / "b_aa.faa", "w") as p:
        for cid, seq, frames in baseline.translate_records(records(), L):
            c.write(f">{cid}\n" + "".join(seq[i:i + 60] + "\n" for i in range(0, len(seq), 60)))
            for fid, nt, aa in frames:
                d.write(f">{fid}\n{nt}\n")
                p.write(f">{fid}\n{aa}\n")


def peak_rss_mib(path: Path, out: Path, L: int) -> float:
    code = ("import resource, sys; from vnp.translate import translate_file; "
            f"translate_file({str(path)!r}, {str(out)!r}, {L}); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(proc.stdout.split()[-1]) / 1024


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mbp", type=float, default=20.0)
    parser.add_argument("-L", type=int, default=500)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        small, big = tmp / "small.fa", tmp / "big.fa"
        bp_small = generate_fasta(small, args.mbp / 4, seed=1)
        bp = generate_fasta(big, args.mbp)
        t0 = time.perf_counter()
        counts = translate_file(big, tmp, args.L)
        vnp_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        run_baseline(big, tmp, args.L)
        base_s = time.perf_counter() - t0
        vnp_rate, base_rate = bp / vnp_s / 1e6, bp / base_s / 1e6
        print(f"translate: input {bp / 1e6:.1f} Mbp, {counts.chunks} chunks, {counts.frames} kept frames")
        print(f"translate: vnp {vnp_rate:.1f} Mbp/s, per-codon baseline {base_rate:.2f} Mbp/s, "
              f"ratio {vnp_rate / base_rate:.1f}x (target >= 10x, one core)")
        rss_small = peak_rss_mib(small, tmp, args.L)
        rss_big = peak_rss_mib(big, tmp, args.L)
        print(f"translate: peak RSS {rss_small:.0f} MiB for {bp_small / 1e6:.1f} Mbp, "
              f"{rss_big:.0f} MiB for {bp / 1e6:.1f} Mbp (ratio {rss_big / rss_small:.2f}; flat = independent of size)")


if __name__ == "__main__":
    main()
