"""Measure a finished prediction run against true labels (`vnp evaluate`).

    vnp evaluate OUT LABELS.tsv [-o DIR]

LABELS.tsv has lines `id<TAB>label`, label `virus` or `others` (blank lines, `#` comments and an
`id<TAB>label` header are skipped). An ID is a sequence ID (it labels the sequence and all its
chunks) or a chunk ID such as `seq1_chunk_3` (it labels that chunk; it wins over its sequence's
label for that chunk). Every ID must name a sequence or chunk of the run.

Per chunk (OUT/chunks.tsv: label and max_score2 = the highest virus score of its frames) and per
sequence (OUT/contigs.tsv: label and max_virus_score), for the items that have a true label and a
score: accuracy, precision, recall, F1 (virus is the positive class), AUROC and the confusion
matrix, computed with scikit-learn. Items without a score (no stop-free frame, filtered) are
counted, not scored. Written to DIR (default OUT): `evaluation.json` and `roc.png`; a summary is
printed on stdout.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

from vnp.support.errors import InputError, exit_on_input_error, where
from vnp.results.plots import pyplot, save_png
from vnp.run.folder import RunFolder

CLASSES = ("others", "virus")


def read_labels(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    labels: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.rstrip("\r").split("\t")
        if number == 1 and fields == ["id", "label"]:
            continue
        if len(fields) != 2 or not fields[0]:
            raise InputError(f"{where(path, line=number)}: expected 'id<TAB>label', got {line!r}")
        if fields[1] not in CLASSES:
            raise InputError(f"{where(path, line=number)}: unknown label {fields[1]!r} (expected virus or others)")
        if fields[0] in labels:
            raise InputError(f"{where(path, line=number)}: {fields[0]!r} is labelled twice")
        labels[fields[0]] = fields[1]
    if not labels:
        raise InputError(f"{path}: no labels")
    return labels


def read_table(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise InputError(f"{path}: not found (is this the folder of a finished `vnp predict` run?)")
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def score_rows(rows: list[dict], truth_of, id_key: str, score_key: str) -> tuple[dict, tuple]:
    """(counts, (truth, score, predicted)) for the rows with a true label; unscored ones counted."""
    truth, score, predicted = [], [], []
    unscored = unlabelled = 0
    for row in rows:
        label = truth_of(row)
        if label is None:
            unlabelled += 1
        elif row[score_key] in ("NA", "") or row["label"] not in CLASSES:
            unscored += 1
        else:
            truth.append(CLASSES.index(label))
            score.append(float(row[score_key]))
            predicted.append(CLASSES.index(row["label"]))
    counts = {"scored": len(truth), "unscored": unscored, "unlabelled": unlabelled}
    return counts, (np.asarray(truth, dtype=np.int64), np.asarray(score), np.asarray(predicted, dtype=np.int64))


def metrics(truth: np.ndarray, score: np.ndarray, predicted: np.ndarray) -> dict:
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        f1_score,
        precision_score,
        recall_score,
        roc_auc_score,
    )

    if len(truth) == 0:
        return {}
    both = len(np.unique(truth)) == 2
    matrix = confusion_matrix(truth, predicted, labels=[0, 1])
    return {"accuracy": float(accuracy_score(truth, predicted)),
            "precision": float(precision_score(truth, predicted, zero_division=0)),
            "recall": float(recall_score(truth, predicted, zero_division=0)),
            "f1": float(f1_score(truth, predicted, zero_division=0)),
            "auroc": float(roc_auc_score(truth, score)) if both else None,
            "confusion_matrix": {"rows_true_cols_predicted": list(CLASSES), "counts": matrix.tolist()}}


def plot_roc(curves: dict, path: Path) -> None:
    from sklearn.metrics import roc_curve

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(5, 5))
    for name, (truth, score, _), auroc in curves.values():
        if auroc is None:
            continue
        fpr, tpr, _ = roc_curve(truth, score)
        ax.plot(fpr, tpr, label=f"{name} (AUROC {auroc:.3f})")
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(loc="lower right")
    fig.tight_layout()
    save_png(fig, path)


def evaluate(out: Path, labels_path: Path, report_dir: Path) -> dict:
    labels = read_labels(labels_path)
    chunks = read_table(out / "chunks.tsv")
    contigs = read_table(out / "contigs.tsv")
    known = {row["chunk_id"] for row in chunks} | {row["sequence_id"] for row in contigs}
    unknown = [name for name in labels if name not in known]
    if unknown:
        raise InputError(f"{labels_path}: {len(unknown)} IDs are neither sequences nor chunks of {out} "
                         f"(first: {unknown[0]!r})")
    levels = {
        "chunk": score_rows(chunks, lambda r: labels.get(r["chunk_id"], labels.get(r["sequence_id"])),
                            "chunk_id", "max_score2"),
        "sequence": score_rows(contigs, lambda r: labels.get(r["sequence_id"]), "sequence_id", "max_virus_score"),
    }
    result, curves = {}, {}
    for level, (counts, arrays) in levels.items():
        values = metrics(*arrays)
        result[level] = {**counts, **values}
        curves[level] = (f"per {level}", arrays, values.get("auroc"))
    report_dir.mkdir(parents=True, exist_ok=True)
    RunFolder.write_json(report_dir / "evaluation.json", {"run": str(out), "labels": str(labels_path), **result})
    plot_roc(curves, report_dir / "roc.png")
    return result


def summary(result: dict) -> str:
    lines = ["level\tscored\tunscored\taccuracy\tprecision\trecall\tf1\tauroc\tTN\tFP\tFN\tTP"]
    for level, values in result.items():
        if not values.get("scored"):
            lines.append(f"{level}\t0\t{values['unscored']}" + "\tNA" * 9)
            continue
        (tn, fp), (fn, tp) = values["confusion_matrix"]["counts"]
        auroc = "NA" if values["auroc"] is None else f"{values['auroc']:.4f}"
        lines.append(f"{level}\t{values['scored']}\t{values['unscored']}\t{values['accuracy']:.4f}\t"
                     f"{values['precision']:.4f}\t{values['recall']:.4f}\t{values['f1']:.4f}\t{auroc}\t"
                     f"{tn}\t{fp}\t{fn}\t{tp}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT", help="folder of a finished `vnp predict` run")
    parser.add_argument("labels", metavar="LABELS.tsv", help="id<TAB>label (virus|others) per sequence or chunk")
    parser.add_argument("-o", "--out-dir", help="where evaluation.json and roc.png go (default: OUT)")


@exit_on_input_error
def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    result = evaluate(out, Path(args.labels), Path(args.out_dir) if args.out_dir else out)
    print(summary(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    from vnp.cli import module_main

    return module_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
