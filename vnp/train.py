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
import traceback
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch.distributed as dist

from vnp.run import dist as vdist
from vnp.run.folder import RunFolder
from vnp.run.plan import load_plan
from vnp.support.config import help_text
from vnp.support.errors import InputError
from vnp.training.config import FEATURES, LABELS, TrainConfig, TrainParams
from vnp.training.features import FeatureSink, compute_features, consolidate, prepare, shared
from vnp.training.head import split_rows, train_head
from vnp.training.inputs import RECORD_LABELS, TrainingFrames
from vnp.training.outputs import write_outputs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("items", nargs="*", metavar="MANIFEST|key=value",
                        help="MANIFEST.tsv (path<TAB>label lines) and configuration overrides")
    parser.add_argument("-o", "--out", help="output folder (created; an interrupted run there is resumed)")
    parser.add_argument("-c", "--config", help="YAML file of configuration keys (overridden by key=value)")
    parser.epilog = help_text(TrainConfig)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def run(args: argparse.Namespace) -> int:
    from vnp.cli import rank_command

    command = rank_command(args, TrainConfig, lambda inputs: None if len(inputs) == 1 else
                           "expected one manifest (vnp train MANIFEST.tsv -o DIR)", "-o DIR")
    if command == 2:
        return 2
    (manifest,), config = command
    return train(config, Path(manifest), Path(args.out))


def train(config: TrainConfig, manifest: Path, out: Path) -> int:
    """One rank's whole job: features (engine), head (DDP), outputs (rank 0)."""
    from vnp.run.engine import StopFlag
    from vnp.run.state import RunState

    folder = RunFolder(out)  # rank 0 holds DIR's lock from its checks to the end of this function

    stop = StopFlag.install()
    try:
        ctx = vdist.init(config.device, config.dist.backend, config.dist.timeout_s)
    except Exception as err:
        print(f"vnp: error: rank {vdist.detect_env().rank}: cannot start: {err}", file=sys.stderr)
        return 1
    try:
        if ctx.device.type == "cpu":
            vdist.set_cpu_threads(config.threads, ctx.env)
        if config.train.batch % ctx.world_size:
            raise InputError(f"train.batch={config.train.batch} cannot be split evenly over {ctx.world_size} ranks",
                             reported=not ctx.is_main)  # every rank finds it; rank 0 says it
        spec = shared(ctx, lambda: prepare(ctx, config, manifest, folder))
        features = out / FEATURES
        feature_folder = RunFolder(features)  # DIR/features: a run folder of its own (its parts are not in work)
        work = feature_folder.work
        if not (features / "features.npy").exists():
            plan = load_plan(work, spec.chunk_length)
            state = RunState(feature_folder, spec, plan)
            sink = FeatureSink(features / "parts", len(spec.remaining), config.progress) if ctx.is_main else None
            compute_features(ctx, state, config, stop, TrainingFrames(work, plan), sink)
            if stop.requested:
                vdist.print0(ctx, f"vnp: stopped by signal; progress is committed in {out}. "
                                  "Run the same command again to resume.")
                return 143
            if ctx.is_main:
                consolidate(features, plan.n_units(spec.unit_chunks), np.load(work / RECORD_LABELS),
                            plan.first_chunk)
        shared(ctx, lambda: check_classes(manifest, features, config.train))
        settings = {"train": asdict(config.train), "features": spec.run_record}
        trainer = train_head(ctx, config, out, settings, stop)
        state = trainer.state
        if stop.requested:
            vdist.print0(ctx, f"vnp: stopped by signal after epoch {state['epoch']}; the checkpoint is in {out}/work. "
                              "Run the same command again to resume.")
            return 143
        if ctx.is_main:
            write_outputs(out, spec, config, trainer, ctx.world_size)
            last = state["history"][-1] if state["history"] else {}
            print(f"vnp: trained {state['epoch']} epochs (best {state['best_epoch']}, validation accuracy "
                  f"{last.get('accuracy', float('nan')):.3f}); classifier and pack.yaml in {out}", file=sys.stderr)
        if ctx.world_size > 1:  # leave the group together: a rank tearing gloo down early aborted its peer
            dist.barrier()
        return 0
    except InputError as err:
        if not err.reported:
            print(f"vnp: error: {err}", file=sys.stderr)
        return 2
    except vdist.PeerFailure as err:
        if not err.reported:  # rank 0 reports its own failure
            print(f"vnp: error: rank {ctx.rank}: {err}", file=sys.stderr)
        return 1
    except Exception as err:
        log_path = folder.train_log(ctx.rank)
        try:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log_path.write_text(traceback.format_exc())
        except OSError:
            pass
        first = str(err).splitlines()[0] if str(err) else ""
        print(f"vnp: error: rank {ctx.rank} failed: {type(err).__name__}: {first} (log: {log_path})", file=sys.stderr)
        return 1
    finally:
        vdist.cleanup()
        folder.close()


def check_classes(manifest: Path, features: Path, params: TrainParams) -> None:
    """Both classes must have kept frames, and enough frames for one batch and a validation set."""
    labels = np.load(features / "labels.npy")
    for name, value in LABELS.items():
        if not (labels == value).any():
            raise InputError(f"{manifest}: no frame of class '{name}' was kept (training keeps stop-free frames of "
                             "chunks without ambiguous bases, from GenBank only those within a CDS translation)")
    split = split_rows(len(labels), params.holdout, params.seed)
    if len(split.train) < params.batch or len(split.val) == 0:
        raise InputError(f"{manifest}: {len(labels)} kept frames are too few for train.batch={params.batch} "
                         f"and train.holdout={params.holdout}")


def main(argv: list[str] | None = None) -> int:
    from vnp.cli import module_main

    return module_main(sys.modules[__name__], argv)



if __name__ == "__main__":
    sys.exit(main())
