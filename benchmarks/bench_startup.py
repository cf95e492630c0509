"""Command-line start-up: `vnp --help` and `vnp translate` on a small file, against `python -c pass`.

    python -m benchmarks.bench_startup [--repeats 7]

Each command runs in a fresh interpreter, `--repeats` times; the median wall time is reported
with its ratio to the bare interpreter's, measured in the same run. `python -c "import torch"`
is shown for scale: the commands that do not need the models must not pay for it.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def seconds(command: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def median_times(commands: dict[str, list[str]], repeats: int) -> dict[str, float]:
    """Median wall time of each command; rounds interleave the commands so that a change in the
    machine's load hits them all alike, after one warm-up round (file cache)."""
    times: dict[str, list[float]] = {name: [] for name in commands}
    for round_ in range(repeats + 1):
        for name, command in commands.items():
            elapsed = seconds(command)
            if round_:
                times[name].append(elapsed)
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    python = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        small = Path(tmp) / "small.fa"
        small.write_text(">s1\n" + "ATGGCCAAAGGC" * 50 + "\n>s2\n" + "ACGT" * 200 + "\n")
        commands = {
            "python -c pass": [python, "-c", "pass"],
            "vnp --help": [python, "-m", "vnp.cli", "--help"],
            "vnp translate small.fa": [python, "-m", "vnp.cli", "translate", str(small), "-o", str(Path(tmp) / "o")],
            "python -c 'import torch'": [python, "-c", "import torch"],
        }
        times = median_times(commands, args.repeats)
    base = times["python -c pass"]
    for name, median in times.items():
        print(f"startup: {name:<26} {median * 1000:7.0f} ms  ratio {median / base:5.1f}x python -c pass")


if __name__ == "__main__":
    main()
