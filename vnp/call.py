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
import sys
import time
from dataclasses import asdict
from pathlib import Path

from vnp.support.config import PredictConfig, iter_help, load_config, to_yaml
from vnp.support.errors import InputError, exit_on_input_error
from vnp.run.folder import RunFolder

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


def _finished_run(folder: RunFolder):
    """The run record, plan and committed scores of a finished run in OUT."""
    from vnp.run.plan import load_plan
    from vnp.run.store import ScoreStore

    run_record = folder.read_run_record()
    plan = load_plan(folder.work, run_record["chunk_length"], run_record.get("filters"))
    store = ScoreStore(folder.parts)
    done = store.load_committed()
    units = plan.n_units(run_record["unit_chunks"])
    if not folder.run_json.is_file() or done != set(range(units)):
        raise InputError(f"{folder.root}: the run is unfinished ({len(done & set(range(units)))} of {units} work units "
                         "committed); finish it with the same vnp predict command first")
    return run_record, plan, store


def call(out: Path, overrides: list[str]) -> dict:
    """Rewrite the results of the finished run in OUT with `overrides`; returns its new run.json."""
    from vnp.results.tables import input_names, settings_record, write_results
    from vnp.results.report import write_report

    _check_overrides(overrides)
    if not out.is_dir():
        raise InputError(f"{out}: no such output folder")
    started = time.time()
    folder = RunFolder(out)
    if not folder.run_record_path.is_file():
        raise InputError(f"{out}: not a vnp output folder (no work/record.json); run vnp predict first")
    with folder:
        folder.lock(busy="a vnp run is using this output folder")  # no call while a run is using OUT
        run_record, plan, store = _finished_run(folder)
        config = load_config(str(folder.config_yaml), overrides)
        keys, scores = store.sorted_scores()
        counts = write_results(out, plan, keys, scores, config, input_names(run_record["inputs"]))
        folder.write_text(folder.config_yaml, to_yaml(config))
        run = folder.read_json(folder.run_json)
        run["counts"] = asdict(counts)
        run["calls"] = {**settings_record(config, "vnp call"), "call_s": round(time.time() - started, 3)}
        folder.write_json(folder.run_json, run)
        write_report(out)
    return run


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
