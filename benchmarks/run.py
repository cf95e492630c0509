"""`make bench`: every benchmark, each printing ratios against a baseline measured in the same run."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = ["benchmarks.bench_startup", "benchmarks.bench_translate", "benchmarks.bench_batches", "benchmarks.bench_embed", "benchmarks.bench_predict",
              "benchmarks.bench_call", "benchmarks.bench_serial", "benchmarks.bench_calibrate", "benchmarks.bench_report", "benchmarks.bench_engine", "benchmarks.bench_sink", "benchmarks.bench_scale", "benchmarks.gpu"]


def main() -> None:
    names = sys.argv[1:] or BENCHMARKS
    for name in names:
        print(f"== {name}", flush=True)
        importlib.import_module(name).main([])


if __name__ == "__main__":
    main()
