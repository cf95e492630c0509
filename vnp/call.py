"""Recompute the calls, regions, viral FASTA and summaries of a finished run with new settings.

    vnp call OUT [key=value ...]          (same as python -m vnp.call OUT ...)
    vnp call out call.min_score=0.9 call.min_fraction=0.7 regions.switch_penalty=5

Reads the committed scores in OUT/work/parts, the packed sequences and the run record; loads no
model (torch is not even imported): about 13 s of CPU for 1,000,000 sequences. Only `call.*`,
`regions.*`, `tables.*` and `calibration` keys may change (the filters and everything else decide
what was embedded: change them with `vnp predict`). Each call starts from the settings of the last
one (OUT/config.yaml); `call.preset=default` returns every call.* and regions.* key to its default
in one step (`relaxed` and `conservative` likewise set all of them). Every file but prediction_results.txt is rewritten
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
from vnp.support.command import command, module_main
from vnp.support.errors import InputError
from vnp.run.folder import RunFolder
from vnp.support.atomic import AtomicFiles

CHANGEABLE = ("call.", "regions.", "tables.")


def changeable(key: str) -> bool:
    """Keys `vnp call` may change: they decide the calls, not what was embedded."""
    return key.startswith(CHANGEABLE) or key == "calibration"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT", help="the output folder of a finished `vnp predict` run")
    parser.add_argument("items", nargs="*", metavar="key=value",
                        help="new call.*, regions.*, tables.* or calibration settings")
    lines = ["keys (the run's values, from OUT/config.yaml, are the defaults):"]
    for key, default, text in iter_help(PredictConfig):
        if changeable(key):
            lines.append(f"  {key} (built-in default: {str(default).lower() if isinstance(default, bool) else default})"
                         f"\n      {text}")
    parser.epilog = "\n".join(lines)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def _check_overrides(items: list[str]) -> None:
    for item in items:
        key = item.split("=", 1)[0]
        if "=" not in item or not changeable(key):
            raise InputError(f"vnp call: {item!r}: only call.*, regions.*, tables.* and calibration keys can change "
                             "after a run (give them as key=value; other keys need vnp predict)")


def finished_run(folder: RunFolder):
    """The run record, plan and committed scores of a finished run in OUT, every file checked
    before anything is written."""
    from vnp.results.tables import input_names
    from vnp.run.plan import load_plan, packed_problem
    from vnp.run.store import ScoreStore

    run_record = _read_object(folder, folder.run_record_path)
    problem = packed_problem(folder.work)
    if problem:
        raise InputError(f"{problem}; the run's packed inputs are damaged: run the same vnp predict command "
                         "again (it repacks them from the unchanged inputs)")
    try:
        plan = load_plan(folder.work, run_record["chunk_length"], run_record.get("filters"))
        units = plan.n_units(run_record["unit_chunks"])
        input_names(run_record["inputs"])
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{folder.run_record_path}: not a vnp run record (keys missing or mistyped)") from None
    store = ScoreStore(folder.parts)
    done = store.load_committed()
    if done != set(range(units)):
        raise InputError(f"{folder.root}: the run is unfinished ({len(done & set(range(units)))} of {units} work units "
                         "committed); finish it with the same vnp predict command first")
    if not folder.run_json.is_file():
        raise InputError(f"{folder.root}: no run.json, though all {units} work units are committed (the run was "
                         "stopped while writing its results, or run.json was removed); run the same vnp predict "
                         "command again to write them")
    return run_record, plan, store


def _read_object(folder: RunFolder, path: Path) -> dict:
    """A JSON object vnp wrote in OUT (run.json, the run record), or one line saying what is wrong."""
    try:
        data = folder.read_json(path)
    except OSError as err:
        raise InputError(f"{path}: cannot read ({err.strerror})") from None
    except (UnicodeDecodeError, ValueError):
        raise InputError(f"{path}: damaged (not valid JSON)") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: damaged (not a JSON object)")
    return data


def call(out: Path, overrides: list[str]) -> dict:
    """Rewrite the results of the finished run in OUT with `overrides`; returns its new run.json.
    Everything is read and checked first; every file is then written to its temporary and all
    are renamed together, or none (on any failure the temporaries are removed)."""
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
        run_record, plan, store = finished_run(folder)
        run = _read_object(folder, folder.run_json)
        config = load_config(str(folder.config_yaml), overrides)
        keys, scores = store.sorted_scores()
        with AtomicFiles() as files:
            counts = write_results(out, plan, keys, scores, config, input_names(run_record["inputs"]), files)
            files.write_text(folder.config_yaml, to_yaml(config))
            run["counts"] = asdict(counts)
            run["calls"] = {**settings_record(config, "vnp call"), "call_s": round(time.time() - started, 3)}
            files.write_json(folder.run_json, run)
            write_report(out, files=files)
    return run


@command
def run(args: argparse.Namespace) -> int:
    run_json = call(Path(args.out), list(args.items))
    counts = run_json["counts"]
    labels = ", ".join(f"{n} {k}" for k, n in sorted(counts["labels"].items()))
    print(f"vnp: {counts['sequences']} sequences ({labels}), {counts['regions']} regions; results in {args.out}",
          file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    return module_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
