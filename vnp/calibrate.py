"""Fit calibrated probabilities from finished runs and their true labels (`vnp calibrate`).

    vnp calibrate RUN LABELS.tsv [RUN LABELS.tsv ...] -o calibration.json
    vnp call OUT calibration=calibration.json call.max_fdr=0.05

Each RUN is the output folder of a finished `vnp predict`; its LABELS.tsv is in the format of
`vnp evaluate` (`id<TAB>virus|others`, by sequence or chunk ID; unlabelled items are left out).
From the committed scores (as `vnp call` reads them, no model loaded) it fits P(virus) per chunk
(isotonic on the chunk's max virus score) and per sequence (logistic regression over the sequence's
chunk-score features, then isotonic): see vnp.results.calibration. The file holds both maps, the
class balance they were fitted at (`virus_share`) and their out-of-fold expected calibration error
and Brier score (5 folds). A level with fewer than 50 labelled items of a class is refused.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from vnp import __version__
from vnp.results import calibration as vcal
from vnp.results import calls as vcalls
from vnp.run.folder import RunFolder
from vnp.seq.chunking import parse_chunk_id
from vnp.support.command import command, module_main
from vnp.support.errors import InputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pairs", nargs="+", metavar="RUN LABELS.tsv",
                        help="a finished vnp predict output folder and its true labels (id<TAB>virus|others), "
                             "one pair or more")
    parser.add_argument("-o", "--output", required=True, metavar="calibration.json",
                        help="the calibration file to write (use it with calibration=...)")


def truth(labels, ids: list[str], plan, labels_path: Path, run: Path) -> tuple[np.ndarray, np.ndarray]:
    """True class per record and per chunk (1 virus, 0 others, -1 unlabelled) from `vnp evaluate`'s
    labels (`evaluate.Labels`: by level, or `either` where the file gives none); a chunk without a
    label of its own takes its sequence's. An ID without a level that names both a sequence and a
    chunk of the run is refused, as `vnp evaluate` refuses it."""
    index = {name: r for r, name in enumerate(ids)}
    per_record = np.full(plan.n_records, -1, dtype=np.int8)
    per_chunk = np.full(plan.n_chunks, -1, dtype=np.int8)
    unknown = []

    def chunk_of(name: str) -> int | None:
        parsed = parse_chunk_id(name)
        record = index.get(parsed[0]) if parsed else None
        if record is None:
            return None
        first, number = int(plan.first_chunk[record]), parsed[1]
        return first + number - 1 if 1 <= number <= int(plan.first_chunk[record + 1]) - first else None

    entries = [(n, v, "sequence") for n, v in labels.sequence.items()] + \
              [(n, v, "chunk") for n, v in labels.chunk.items()] + [(n, v, None) for n, v in labels.either.items()]
    for name, label, level in entries:
        value = int(label == "virus")
        record = index.get(name) if level != "chunk" else None
        chunk = chunk_of(name) if level != "sequence" else None
        if record is not None and chunk is not None:
            raise InputError(f"{labels_path}: line {labels.line[(name, level)]}: {name!r} names both a sequence and a "
                             "chunk of the run: add a third column, sequence or chunk")
        if record is not None:
            per_record[record] = value
        elif chunk is not None:
            per_chunk[chunk] = value
        else:
            unknown.append(name)
    if unknown:
        raise InputError(f"{labels_path}: {len(unknown)} IDs are neither sequences nor chunks of {run} "
                         f"(first: {unknown[0]!r})")
    record_of_chunk = np.repeat(np.arange(plan.n_records), np.diff(plan.first_chunk))
    per_chunk = np.where(per_chunk >= 0, per_chunk, per_record[record_of_chunk])
    return per_record, per_chunk


def labelled_items(run: Path, labels_path: Path) -> tuple[dict, tuple[np.ndarray, ...]]:
    """(the run's entry in the file, (chunk scores, chunk truth, sequence features, sequence truth))
    of the labelled items with scores."""
    from vnp.call import finished_run
    from vnp.evaluate import read_labels
    from vnp.run.plan import iter_ids
    from vnp.support.paths import file_sha256

    folder = RunFolder(run)
    if not folder.run_record_path.is_file():
        raise InputError(f"{run}: not a vnp output folder (no work/record.json)")
    run_record, plan, store = finished_run(folder)
    labels = read_labels(labels_path)
    per_record, per_chunk = truth(labels, list(iter_ids(folder.work)), plan, labels_path, run)
    keys, scores = store.sorted_scores()
    chunks = vcalls.chunk_scores(plan.n_chunks, keys, scores)
    score, has = vcal.chunk_feature(chunks)
    features, usable = vcal.sequence_features(plan, chunks)
    chunk_rows = has & (per_chunk >= 0)
    record_rows = usable & (per_record >= 0)
    entry = {"run": str(run.resolve()), "labels": str(labels_path.resolve()), "labels_sha256": file_sha256(labels_path),
             "pack": run_record.get("pack"), "chunk_length": run_record.get("chunk_length"),
             "labelled_chunks": int(chunk_rows.sum()), "labelled_sequences": int(record_rows.sum())}
    return entry, (score[chunk_rows], per_chunk[chunk_rows], features[record_rows], per_record[record_rows])


def calibrate(pairs: list[tuple[Path, Path]], output: Path) -> dict:
    """Fit the calibration of the labelled runs and write it to `output`; returns it."""
    if not output.parent.is_dir():
        raise InputError(f"{output}: its folder does not exist")
    entries, parts = [], []
    for run, labels_path in pairs:
        entry, items = labelled_items(run, labels_path)
        entries.append(entry)
        parts.append(items)
    chunk_x, chunk_y, record_x, record_y = (np.concatenate(column) for column in zip(*parts))
    data = {"format": vcal.CALIBRATION_FORMAT, "vnp": __version__, "runs": entries,
            "chunk": vcal.fit_level("chunk", chunk_x, chunk_y.astype(np.int64)),
            "sequence": vcal.fit_level("sequence", record_x.reshape(-1, len(vcal.SEQUENCE_FEATURES)),
                                       record_y.astype(np.int64))}
    RunFolder.write_json(output, data)
    return data


def calibration_summary(data: dict, output: Path) -> str:
    lines = []
    for level in ("sequence", "chunk"):
        entry = data[level]
        fold = entry["out_of_fold"]
        lines.append(f"vnp: {level}s: {entry['items']} labelled ({entry['virus']} virus, share "
                     f"{entry['virus_share']:.3f}); out-of-fold ECE {fold['ece']:.4f}, Brier {fold['brier']:.4f}")
    lines.append(f"vnp: calibration written to {output}; use it with vnp call OUT calibration={output}")
    return "\n".join(lines)


@command
def run(args: argparse.Namespace) -> int:
    items = list(args.pairs)
    if len(items) % 2:
        given = f"{len(items)} path{'s' if len(items) > 1 else ''} given"
        raise InputError(f"vnp calibrate: {given}; give each run with its labels: RUN LABELS.tsv [RUN LABELS.tsv ...]")
    pairs = [(Path(items[i]), Path(items[i + 1])) for i in range(0, len(items), 2)]
    output = Path(args.output)
    data = calibrate(pairs, output)
    print(calibration_summary(data, output), file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    return module_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
