"""Mutation testing of the core modules with cosmic-ray (`make mutate`): each module's mutants are
run against that module's own fast tests only, one mutant at a time, mutated in place in this
checkout (cosmic-ray restores every file after each mutant; do not edit the tree meanwhile).

    python -m tests.mutation [--sample N] [--seed S] [--out DIR] [--tally | --survivors] [MODULE ...]

MODULE is a key of MODULES (default: all, most important first). `--sample N` runs N mutants per
module drawn at random (seeded), the others are marked skipped: a full campaign is thousands of
pytest runs. Prints per module and overall the mutants killed, surviving and equivalent (inside
type annotations, never evaluated) and the share killed of the others; the survivors' diffs go to
DIR/NAME.txt. `--tally` only counts the sessions already in DIR; `--survivors` runs their survivors
again (after new tests).
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# module -> the test files that cover it (only these run for its mutants)
MODULES = {
    "filters": ("vnp/seq/filters.py", "tests/test_sequence.py tests/test_packing.py"),
    "chunking": ("vnp/seq/chunking.py", "tests/test_sequence.py"),
    "frames": ("vnp/seq/frames.py", "tests/test_sequence.py"),
    "seqio": ("vnp/seq/seqio.py", "tests/test_seqio.py tests/test_sequence.py tests/test_bam.py"),
    "folder": ("vnp/run/folder.py", "tests/test_run_folder.py"),
    "store": ("vnp/run/store.py", "tests/test_engine.py"),
    "engine": ("vnp/run/engine.py", "tests/test_engine.py"),
    "exchange": ("vnp/run/exchange.py", "tests/test_engine.py tests/test_exchange.py"),
    "identity": ("vnp/models/identity.py", "tests/test_model_identity.py"),
    "evaluate": ("vnp/evaluate.py", "tests/test_evaluate.py"),
    "calls": ("vnp/results/calls.py", "tests/test_regions.py tests/test_outputs.py"),
    "regions": ("vnp/results/regions.py", "tests/test_regions.py"),
    "tables": ("vnp/results/tables.py", "tests/test_outputs.py tests/test_results.py tests/test_bed.py tests/test_text.py tests/test_report.py"),
}

CONFIG = """[cosmic-ray]
module-path = "{module}"
timeout = {timeout}
excluded-modules = []
test-command = "env PYTHONPATH={root} {python} -m pytest -x -q -p no:cacheprovider -m 'not slow' {tests}"

[cosmic-ray.distributor]
name = "local"
"""


def cosmic_ray(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "cosmic_ray.cli", *args], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)


def sample(db: Path, keep: int, seed: int) -> None:
    """Mark all but `keep` random pending mutants as skipped. The draw is over the mutants in a
    fixed order (module, position, operator, occurrence), not over cosmic-ray's job IDs (random at
    each `init`), so the same seed draws the same mutants again."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    with use_db(str(db), WorkDB.Mode.open) as work_db:
        jobs = [item.job_id for item in sorted(work_db.pending_work_items, key=mutant_key)]
        if len(jobs) <= keep:
            return
        kept = set(random.Random(seed).sample(jobs, keep))
        skipped = WorkResult(worker_outcome=WorkerOutcome.SKIPPED, output="not in the sample")
        work_db.set_multiple_results([job for job in jobs if job not in kept], skipped)


def mutant_key(item) -> tuple:
    """What a mutant is, independent of its job ID."""
    return tuple((str(m.module_path), tuple(m.start_pos), m.operator_name, m.occurrence) for m in item.mutations)


def annotations(module: Path) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Where the type annotations of a module lie ((line, column) start and end). Every core module
    starts with `from __future__ import annotations`: they are never evaluated, so a mutant inside
    one (`str | None` -> `str & None`) is equivalent."""
    import ast

    spans = []
    for node in ast.walk(ast.parse(module.read_text())):
        found = [node.returns] if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else []
        found += [node.annotation] if isinstance(node, (ast.arg, ast.AnnAssign)) else []
        spans += [((a.lineno, a.col_offset), (a.end_lineno, a.end_col_offset)) for a in found if a is not None]
    return spans


def tally(db: Path, module: Path, survivors: Path) -> tuple[int, int, int]:
    """(killed, survived, equivalent) of a finished session, skipped mutants left out; the
    survivors' diffs are written to `survivors`."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome

    killed = survived = equivalent = 0
    lines = []
    spans = annotations(module)
    with use_db(str(db), WorkDB.Mode.open) as work_db:
        for item, result in work_db.completed_work_items:
            if result.worker_outcome == WorkerOutcome.SKIPPED:
                continue
            mutation = item.mutations[0]
            start = tuple(mutation.start_pos)
            if any(first <= start < last for first, last in spans):
                equivalent += 1
            elif result.test_outcome == TestOutcome.SURVIVED:
                survived += 1
                lines += [f"# {mutation.module_path}:{start[0]} {mutation.operator_name}", result.diff or "", ""]
            else:
                killed += 1
    survivors.write_text("\n".join(lines))
    return killed, survived, equivalent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", metavar="MODULE")
    parser.add_argument("--sample", type=int, default=0, help="mutants per module (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per mutant's tests")
    parser.add_argument("--out", type=Path, default=ROOT / "mutation_out")
    parser.add_argument("--tally", action="store_true", help="only count the sessions already in --out")
    parser.add_argument("--survivors", action="store_true",
                        help="run again only the mutants that survived in the sessions in --out (after new tests)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.modules) - set(MODULES))
    if unknown:
        parser.error(f"unknown module {unknown[0]!r} (one of: {', '.join(MODULES)})")
    args.out.mkdir(parents=True, exist_ok=True)
    totals = [0, 0, 0]
    print("module\tkilled\tsurvived\tequivalent (annotations)\tkilled %")
    for name in args.modules or list(MODULES):
        module, tests = MODULES[name]
        config, db = args.out / f"{name}.toml", args.out / f"{name}.sqlite"
        if args.survivors and db.exists():
            import sqlite3

            with sqlite3.connect(db) as connection:  # a mutant without a result is pending again
                connection.execute("DELETE FROM work_results WHERE test_outcome = 'SURVIVED'")
            cosmic_ray("exec", str(config), str(db))
        elif not args.tally:
            config.write_text(CONFIG.format(module=module, tests=tests, root=ROOT, python=sys.executable,
                                            timeout=args.timeout))
            db.unlink(missing_ok=True)
            cosmic_ray("init", str(config), str(db))
            if args.sample:
                sample(db, args.sample, args.seed)
            cosmic_ray("exec", str(config), str(db))
        elif not db.exists():
            continue
        counts = tally(db, ROOT / module, args.out / f"{name}.txt")
        totals = [t + c for t, c in zip(totals, counts)]
        print(f"{name}\t" + "\t".join(map(str, counts)) + f"\t{percent(*counts)}", flush=True)
    print("all\t" + "\t".join(map(str, totals)) + f"\t{percent(*totals)}")
    return 0


def percent(killed: int, survived: int, equivalent: int) -> str:
    """Killed among the mutants that are not equivalent."""
    return f"{100 * killed / (killed + survived):.1f}" if killed + survived else "NA"


if __name__ == "__main__":
    sys.exit(main())
