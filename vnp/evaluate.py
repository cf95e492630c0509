"""Measure a finished prediction run against true labels (`vnp evaluate`).

    vnp evaluate OUT LABELS.tsv [-o DIR]

LABELS.tsv has lines `id<TAB>label[<TAB>level]`, label `virus` or `others` (blank lines, `#`
comments and a first line whose second column is `label`, a header, are skipped). An ID names a
sequence (its label applies to the sequence and all its chunks) or a chunk such as `seq1_chunk_3`
(its label applies to that chunk and wins over its sequence's label there). An ID that is both (a
sequence `a_chunk_1` beside chunk 1 of a sequence `a`) is refused unless the third column, `level`,
says `sequence` or `chunk`; every ID must name a sequence or chunk of the run (of that level).

Per chunk (OUT/chunks.tsv: label and max_score2 = the highest virus score of its frames) and per
sequence (OUT/contigs.tsv: label and max_virus_score), for the items that have a true label and a
score: accuracy, precision, recall, F1 (virus is the positive class), AUROC and the confusion
matrix, computed with scikit-learn. Items without a score (no stop-free frame, filtered) are
counted, not scored. The tables are read in batches by the report's reader. Written to DIR
(default OUT): `evaluation.json` and `roc.png`; a summary is printed on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vnp.results.plots import pyplot, save_png
from vnp.results.report.data import read_columns, table_header
from vnp.run.folder import RunFolder, check_empty
from vnp.support.atomic import AtomicFiles
from vnp.support.command import command, module_main
from vnp.support.errors import InputError, where
from vnp.support.labelled import labelled_lines
from vnp.support.paths import check_output_folder, regular_file

from vnp.models import CLASSES


LEVELS = ("sequence", "chunk")


@dataclass
class Labels:
    """True labels by what they name: `sequence` and `chunk` (a level given in the file) and
    `either` (no level: the ID must turn out to name exactly one sequence or chunk)."""

    path: Path
    sequence: dict[str, str] = field(default_factory=dict)
    chunk: dict[str, str] = field(default_factory=dict)
    either: dict[str, str] = field(default_factory=dict)
    line: dict[tuple[str, str | None], int] = field(default_factory=dict)  # (id, level) -> line

    def of_sequence(self, sid: str) -> str | None:
        return self.sequence.get(sid) or self.either.get(sid)

    def of_chunk(self, cid: str, sid: str) -> str | None:
        return self.chunk.get(cid) or self.either.get(cid) or self.of_sequence(sid)


def read_labels(path: Path) -> Labels:
    labels = Labels(path)
    for number, fields in labelled_lines(path, "labels file", ("id", "label", "level"), optional=1):
        name, label, level = fields[0], fields[1], fields[2] if len(fields) == 3 else None
        if label not in CLASSES:
            raise InputError(f"{where(path, line=number)}: unknown label {label!r} (expected virus or others)")
        if level is not None and level not in LEVELS:
            raise InputError(f"{where(path, line=number)}: unknown level {level!r} (expected sequence or chunk)")
        # the same ID twice: at one level, or once without a level and once with one
        others = (None, *LEVELS) if level is None else (level, None)
        clash = [(name, other) for other in others if (name, other) in labels.line]
        if clash:
            raise InputError(f"{where(path, line=number)}: {name!r} is labelled twice (also line {labels.line[clash[0]]})")
        labels.line[(name, level)] = number
        {"sequence": labels.sequence, "chunk": labels.chunk, None: labels.either}[level][name] = label
    if not labels.line:
        raise InputError(f"{path}: no labels")
    return labels


@dataclass
class Scored:
    """The items of one level that have a true label: truth, score and predicted class (0 others, 1 virus)."""

    truth: list[np.ndarray] = field(default_factory=list)
    score: list[np.ndarray] = field(default_factory=list)
    predicted: list[np.ndarray] = field(default_factory=list)
    unscored: int = 0
    unlabelled: int = 0

    def add(self, truth: list[str | None], score: np.ndarray, label: np.ndarray) -> None:
        labelled = np.array([t is not None for t in truth], dtype=bool)
        scored = ~np.isnan(score) & np.isin(label, CLASSES)
        keep = labelled & scored
        self.unlabelled += int((~labelled).sum())
        self.unscored += int((labelled & ~scored).sum())
        self.truth.append(np.array([CLASSES.index(t) for t, k in zip(truth, keep) if k], dtype=np.int64))
        self.score.append(score[keep])
        self.predicted.append((label[keep] == "virus").astype(np.int64))

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        join = lambda parts, dtype: np.concatenate(parts) if parts else np.zeros(0, dtype)  # noqa: E731
        return join(self.truth, np.int64), join(self.score, np.float64), join(self.predicted, np.int64)

    def counts(self) -> dict[str, int]:
        return {"scored": int(sum(len(t) for t in self.truth)), "unscored": self.unscored,
                "unlabelled": self.unlabelled}


def score_tables(out: Path, labels: Labels) -> dict[str, Scored]:
    """Both levels scored against `labels`, reading contigs.tsv and chunks.tsv once each; refuses
    labels that name nothing, or (without a level) both a sequence and a chunk."""
    contigs, chunks = (_table(out, name) for name in ("contigs.tsv", "chunks.tsv"))
    table_header(contigs, ("sequence_id", "max_virus_score", "label"))
    table_header(chunks, ("chunk_id", "sequence_id", "max_score2", "label"))
    named = set(labels.sequence) | set(labels.chunk) | set(labels.either)
    found: dict[str, set[str]] = {"sequence": set(), "chunk": set()}
    levels = {"sequence": Scored(), "chunk": Scored()}
    for batch in read_columns(contigs, {"sequence_id": str, "max_virus_score": float, "label": str}):
        ids = batch["sequence_id"].tolist()
        found["sequence"].update(named.intersection(ids))
        levels["sequence"].add([labels.of_sequence(s) for s in ids], batch["max_virus_score"], batch["label"])
    for batch in read_columns(chunks, {"chunk_id": str, "sequence_id": str, "max_score2": float, "label": str}):
        ids = batch["chunk_id"].tolist()
        found["chunk"].update(named.intersection(ids))
        truth = [labels.of_chunk(c, s) for c, s in zip(ids, batch["sequence_id"].tolist())]
        levels["chunk"].add(truth, batch["max_score2"], batch["label"])
    check_named(labels, found, out)
    return levels


def _table(out: Path, name: str) -> Path:
    if not (out / name).exists():
        raise InputError(f"{out / name}: not found (is {out} the folder of a finished `vnp predict` run?)")
    return regular_file(out / name, "table")


def check_named(labels: Labels, found: dict[str, set[str]], out: Path) -> None:
    """Every label names what it says (or, without a level, exactly one sequence or chunk)."""
    both = [name for name in labels.either if name in found["sequence"] and name in found["chunk"]]
    if both:
        line = labels.line[(both[0], None)]
        raise InputError(f"{where(labels.path, line=line)}: {both[0]!r} is both a sequence ID and a chunk ID of "
                         f"{out} ({len(both)} such IDs); say which in a third column: "
                         f"{both[0]}<TAB><label><TAB>sequence (or chunk)")
    found = {**found, None: found["sequence"] | found["chunk"]}
    unknown = [(name, level) for level, names in (("sequence", labels.sequence), ("chunk", labels.chunk),
                                                  (None, labels.either))
               for name in names if name not in found[level]]
    if unknown:
        name, level = unknown[0]
        what = f"{level}s" if level else "sequences nor chunks"
        raise InputError(f"{where(labels.path, line=labels.line[(name, level)])}: {len(unknown)} IDs are "
                         f"{'not ' if level else 'neither '}{what} of {out} (first: {name!r})")


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


def plot_roc(curves: dict, path: Path, files=None) -> None:
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
    if ax.get_legend_handles_labels()[1]:  # no curve (no AUROC anywhere): no empty legend
        ax.legend(loc="lower right")
    fig.tight_layout()
    save_png(fig, path, files=files)


def check_report_dir(report_dir: Path, out: Path) -> None:
    """-o DIR must be new, empty, the run's OUT or another folder vnp made (a run folder, or one it
    wrote an evaluation into): vnp replaces no evaluation.json or roc.png it did not write."""
    if report_dir.exists() and not report_dir.is_dir():
        raise InputError(f"{report_dir}: -o is an existing file, not a folder")
    if not report_dir.is_dir() or report_dir.resolve() == out.resolve() or RunFolder(report_dir).is_vnp_folder():
        return
    try:
        previous = json.loads((report_dir / "evaluation.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        previous = None
    if not (isinstance(previous, dict) and {"run", "labels"} <= previous.keys()):
        check_empty(report_dir, "evaluation folder (-o)")


def evaluate(out: Path, labels_path: Path, report_dir: Path) -> dict:
    check_report_dir(report_dir, out)
    check_output_folder(report_dir)
    labels = read_labels(labels_path)
    levels = score_tables(out, labels)
    result, curves = {}, {}
    for level in ("chunk", "sequence"):
        arrays = levels[level].arrays()
        values = metrics(*arrays)
        result[level] = {**levels[level].counts(), **values}
        curves[level] = (f"per {level}", arrays, values.get("auroc"))
    try:
        report_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"{report_dir}: cannot create the folder ({err.strerror})") from None
    with AtomicFiles() as files:  # both files or neither
        files.write_json(report_dir / "evaluation.json", {"run": str(out), "labels": str(labels_path), **result})
        plot_roc(curves, report_dir / "roc.png", files)
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
    parser.add_argument("labels", metavar="LABELS.tsv",
                        help="id<TAB>label[<TAB>level]: label virus or others, level sequence or chunk (needed "
                        "only for an ID that names both)")
    parser.add_argument("-o", "--out-dir", help="where evaluation.json and roc.png go (default: OUT)")


@command
def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    result = evaluate(out, Path(args.labels), Path(args.out_dir) if args.out_dir else out)
    print(summary(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    return module_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
