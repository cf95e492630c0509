"""Training a VirNucPro classifier head on labelled sequences (`vnp train`), under any launcher.

    vnp train MANIFEST.tsv -o DIR [-c CONFIG.yaml] [key=value ...]
    torchrun --standalone --nproc_per_node=4 -m vnp.train MANIFEST.tsv -o DIR pack=500 chunk_length=150

MANIFEST.tsv has one input file per line, `path<TAB>label` with label `virus` or `others` (paths
relative to the manifest's folder; blank lines and `#` comments are skipped). A GenBank file
(`.gbff`, plain or compressed) selects frames by the original's training rule; a FASTA/FASTQ file
keeps every stop-free frame:

  * a chunk with any ambiguous base (N R Y M K S W H B V D) is dropped;
  * GenBank: a frame is kept when it has no stop codon and its protein is a substring of one of
    the record's CDS `translation` qualifiers (the original's `identify_seq(..., istraindata=True)`);
  * FASTA: every stop-free frame is kept (as prediction does).

Two stages, both resumable:
  1. features: the prediction engine (`vnp.run.steps.run_steps`) embeds every kept frame with the
     pack's DNABERT-S and ESM2 (each rank its work units, rows gathered to rank 0), rank 0 writes
     them in checked parts to DIR/features and at the end into DIR/features/features.npy. They
     are cached: a rerun with other `train.*` values trains again without embedding again.
  2. head: the original's MLP trained with DistributedDataParallel: batch statistics synchronised
     across ranks, a DistributedSampler over frames, a global batch of `train.batch` whatever the
     world size, dropout masks drawn per frame (not per rank). Checkpointed after every epoch;
     the same command resumes after a kill with the same final weights.

DIR gets `classifier/` (safetensors + json, as `vnp pack convert` writes), `pack.yaml` (use it as
`vnp predict pack=DIR/pack.yaml`), `metrics.json` (per epoch losses and validation metrics, the
held-out frame IDs) and `learning_curve.png`.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch.distributed as dist

from vnp.run import dist as vdist
from vnp.run.folder import FeatureFolder, TrainingFolder
from vnp.run.lifecycle import Rank, rank_command, run_rank, shared
from vnp.run.plan import load_plan
from vnp.support.command import command, module_main
from vnp.support.config import help_text
from vnp.support.errors import InputError
from vnp.training.config import TrainConfig, TrainParams
from vnp.training.features import FeatureSink, check, compute_features, consolidate, prepare
from vnp.training.head import split_rows, train_head
from vnp.training.inputs import TrainingFrames
from vnp.training.outputs import write_outputs
from vnp.models import CLASSES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("items", nargs="*", metavar="MANIFEST|key=value",
                        help="MANIFEST.tsv (path<TAB>label lines) and configuration overrides")
    parser.add_argument("-o", "--out", help="output folder (created; an interrupted run there is resumed)")
    parser.add_argument("-c", "--config", help="YAML file of configuration keys (overridden by key=value)")
    parser.epilog = help_text(TrainConfig)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


@command
def run(args: argparse.Namespace) -> int:
    (manifest,), config = rank_command(args, TrainConfig, lambda inputs: None if len(inputs) == 1 else
                                       "expected one manifest (vnp train MANIFEST.tsv -o DIR)", "-o DIR")
    return train(config, Path(manifest), Path(args.out))


def train(config: TrainConfig, manifest: Path, out: Path) -> int:
    """One rank's whole job, in the rank lifecycle (`vnp.run.lifecycle.run_rank`)."""
    return run_rank(lambda rank: _train(rank, config, manifest), config.device, config.dist.backend,
                    config.dist.timeout_s, out=out, threads=config.threads, folder_type=TrainingFolder)


def _train(rank: Rank, config: TrainConfig, manifest: Path) -> int:
    """Features (engine), head (DDP), outputs (rank 0)."""
    from vnp.run.state import RunState, share_preparation

    ctx, folder, stop = rank.ctx, rank.folder, rank.stop  # folder: a TrainingFolder (every path of DIR)
    out = folder.root
    if config.train.batch % ctx.world_size:
        raise InputError(f"train.batch={config.train.batch} cannot be split evenly over {ctx.world_size} ranks",
                         reported=not ctx.is_main)  # every rank finds it; rank 0 says it
    spec, _ = share_preparation(rank, lambda: check(config, manifest, folder),
                                lambda checked: (prepare(ctx, config, *checked, folder), None))
    features = folder.features  # DIR/features: a run folder of its own (its parts are not in work)
    if not features.matrix.exists():
        plan = load_plan(features.work, spec.chunk_length)
        state = RunState(features, spec, plan)
        sink = FeatureSink(features.parts, len(spec.remaining), config.progress) if ctx.is_main else None
        compute_features(ctx, state, config, stop, TrainingFrames(features, plan), sink)
        if stop.requested:
            vdist.print0(ctx, f"vnp: stopped by signal; progress is committed in {out}. "
                              "Run the same command again to resume.")
            return 143
        if ctx.is_main:
            consolidate(features, plan.n_units(spec.unit_chunks), np.load(features.record_labels),
                        plan.first_chunk)
    shared(ctx, lambda: check_classes(manifest, features, config.train))
    settings = {"train": asdict(config.train), "features": spec.run_record}
    trainer = train_head(ctx, config, folder, settings, stop)
    state = trainer.state
    if stop.requested:
        vdist.print0(ctx, f"vnp: stopped by signal after epoch {state['epoch']}; the checkpoint is in {folder.work}. "
                          "Run the same command again to resume.")
        return 143
    if ctx.is_main:
        write_outputs(folder, spec, config, trainer, ctx.world_size)
        last = state["history"][-1] if state["history"] else {}
        print(f"vnp: trained {state['epoch']} epochs (best {state['best_epoch']}, validation accuracy "
              f"{last.get('accuracy', float('nan')):.3f}); classifier and pack.yaml in {out}", file=sys.stderr)
    if ctx.world_size > 1:  # leave the group together: a rank tearing gloo down early aborted its peer
        dist.barrier()
    return 0


def check_classes(manifest: Path, features: FeatureFolder, params: TrainParams) -> None:
    """Both classes must have kept frames, and enough frames for one batch and a validation set."""
    labels = np.load(features.labels)
    for value, name in enumerate(CLASSES):
        if not (labels == value).any():
            raise InputError(f"{manifest}: no frame of class '{name}' was kept (training keeps stop-free frames of "
                             "chunks without ambiguous bases, from GenBank only those within a CDS translation)")
    split = split_rows(len(labels), params.holdout, params.seed)
    if len(split.train) < params.batch or len(split.val) == 0:
        raise InputError(f"{manifest}: {len(labels)} kept frames are too few for train.batch={params.batch} "
                         f"and train.holdout={params.holdout}")


def main(argv: list[str] | None = None) -> int:
    return module_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
