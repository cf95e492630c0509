"""`vnp calibrate` and `vnp call calibration=` on a synthetic finished run of 1,000,000 sequences.

    python -m benchmarks.bench_calibrate [--sequences 1000000]

The run is bench_call's (150-650 bp sequences, 500 bp chunks, three frames per chunk; viral, host
and chimeric sequences), every sequence labelled (chimeric ones virus). Each command runs in a fresh
process; CPU seconds (process start and imports included) and peak RSS (VmHWM) are reported, with
`vnp call` without a calibration, on the same run, as the baseline.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.bench_call import fake_run

# a vnp command in a fresh process that prints its peak RSS (kB) last
COMMAND = """
import sys
from vnp.cli import main
code = main(sys.argv[1:])
print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")))
sys.exit(code)
"""


def measure(*args: str) -> tuple[float, float, float]:
    """(wall s, CPU s, peak RSS MiB) of `vnp ARGS` in a fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", COMMAND, *args], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"vnp {' '.join(args)} failed: {proc.stderr}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return seconds, cpu, int(proc.stdout.split()[-1]) / 1024


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sequences", type=int, default=1_000_000)
    n = parser.parse_args(argv).sequences
    with tempfile.TemporaryDirectory() as tmp:
        out, labels, calibration = Path(tmp) / "run", Path(tmp) / "labels.tsv", Path(tmp) / "calibration.json"
        kind = fake_run(out, n)
        with open(labels, "w") as fh:
            fh.writelines(f"contig_{i}\t{'others' if 10 <= k < 18 else 'virus'}\n" for i, k in enumerate(kind.tolist()))
        rows = {"vnp call (baseline, no calibration)": measure("call", str(out)),
                "vnp calibrate": measure("calibrate", str(out), str(labels), "-o", str(calibration)),
                "vnp call calibration=": measure("call", str(out), f"calibration={calibration}"),
                "vnp call calibration= call.max_fdr=0.05": measure("call", str(out), f"calibration={calibration}",
                                                                   "call.max_fdr=0.05")}
    for name, (seconds, cpu, peak) in rows.items():
        print(f"{name}, {n:,} sequences: {seconds:.1f} s wall, {cpu:.1f} s CPU ({1e6 * cpu / n:.1f} us/sequence), "
              f"peak RSS {peak:.0f} MiB")
    base = rows["vnp call (baseline, no calibration)"][1]
    print(f"vnp call calibration= costs {rows['vnp call calibration='][1] / base:.2f}x the CPU of vnp call without")


if __name__ == "__main__":
    main()
