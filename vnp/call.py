"""Recompute the calls, regions, viral FASTA and summaries of a finished run with new settings.

    vnp call OUT [key=value ...]          (same as python -m vnp.call OUT ...)
    vnp call out call.min_score=0.9 call.min_fraction=0.7 regions.switch_penalty=5

Reads the committed scores in OUT/work/parts, the packed sequences and the run record; loads no
model (torch is not even imported): about 13 s of CPU for 1,000,000 sequences. Only `call.*`,
`regions.*` and `tables.*` keys may change (the filters and everything else decide what was
embedded: change them with `vnp predict`). Every file but prediction_results.txt is rewritten
(each to a temporary name, renamed once all are complete); config.yaml and run.json (its "calls"
and "counts") record the settings used. An unfinished run is refused.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

from vnp.config import PredictConfig, iter_help, load_config, to_yaml
from vnp.errors import InputError, exit_on_input_error

CHANGEABLE = ("call.", "regions.", "tables.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT", help="the output folder of a finished `vnp predict` run")
    parser.add_argument("items", nargs="*", metavar="key=value", help="new call.*, regions.* or tables.* settings")
    lines = ["keys (the run's values, from OUT/config.yaml, are the defaults):"]
    for key, default, text in iter_help(PredictConfig):
        if key.startswith(CHANGEABLE):
            lines.append(f"  {key} (built-in default: {str(default).lower() if isinstance(default, bool) else default})"
                         f"\n      {text}")
    parser.epilog = "\n".join(lines)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def _check_overrides(items: list[str]) -> None:
    for item in items:
        key = item.split("=", 1)[0]
        if "=" not in item or not key.startswith(CHANGEABLE):
            raise InputError(f"vnp call: {item!r}: only call.*, regions.* and tables.* keys can change after a run "
                             "(give them as key=value; other keys need vnp predict)")


@contextmanager
def _locked(out: Path) -> Iterator[None]:
    """The lock `vnp predict` holds on OUT (vnp.run_state): no call while a run is using OUT."""
    with open(out / "work" / ".lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise InputError(f"{out}: a vnp run is using this output folder") from None
        yield  # closing the file releases the lock


def _finished_run(out: Path):
    """The run record, plan and committed scores of a finished run in OUT."""
    from vnp.plan import load_plan
    from vnp.store import ScoreStore

    work = out / "work"
    record = json.loads((work / "record.json").read_text())
    plan = load_plan(work, record["chunk_length"], record.get("filters"))
    store = ScoreStore(work / "parts")
    done = store.load_committed()
    units = plan.n_units(record["unit_chunks"])
    if not (out / "run.json").is_file() or done != set(range(units)):
        raise InputError(f"{out}: the run is unfinished ({len(done & set(range(units)))} of {units} work units "
                         "committed); finish it with the same vnp predict command first")
    return record, plan, store


def call(out: Path, overrides: list[str]) -> dict:
    """Rewrite the results of the finished run in OUT with `overrides`; returns its new run.json."""
    from vnp.outputs import input_names, settings_record, write_results
    from vnp.report import write_report

    _check_overrides(overrides)
    if not out.is_dir():
        raise InputError(f"{out}: no such output folder")
    started = time.time()
    if not (out / "work" / "record.json").is_file():
        raise InputError(f"{out}: not a vnp output folder (no work/record.json); run vnp predict first")
    with _locked(out):
        record, plan, store = _finished_run(out)
        config = load_config(str(out / "config.yaml"), overrides)
        keys, scores = store.sorted_scores()
        counts = write_results(out, plan, keys, scores, config, input_names(record["inputs"]))
        _write_atomic(out / "config.yaml", to_yaml(config))
        run = json.loads((out / "run.json").read_text())
        run["counts"] = asdict(counts)
        run["calls"] = {**settings_record(config, "vnp call"), "call_s": round(time.time() - started, 3)}
        _write_atomic(out / "run.json", json.dumps(run, indent=2) + "\n")
        write_report(out)
    return run


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@exit_on_input_error
def run(args: argparse.Namespace) -> int:
    run_json = call(Path(args.out), list(args.items))
    counts = run_json["counts"]
    labels = ", ".join(f"{n} {k}" for k, n in sorted(counts["labels"].items()))
    print(f"vnp: {counts['sequences']} sequences ({labels}), {counts['regions']} regions; results in {args.out}",
          file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    from vnp.cli import module_main

    return module_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
