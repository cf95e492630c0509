"""Distributed VirNucPro prediction: one process per GPU (or CPU rank), any standard launcher.

    python -m vnp.predict INPUT... -o OUT [-c CONFIG.yaml] [key=value ...]
    torchrun --standalone --nproc_per_node=4 -m vnp.predict INPUT... -o OUT pack=500 classifier=500_model.pth
    accelerate launch --num_processes 4 -m vnp.predict INPUT... -o OUT ...
    srun python -m vnp.predict INPUT... -o OUT ...          (see launch/slurm.sbatch)
    vnp predict --gpus 0,1 INPUT... -o OUT ...               (relaunches itself under torchrun)

Rank 0 validates and packs the inputs once; every rank derives the chunk plan, takes work units
(blocks of consecutive chunks) through a DistributedSampler, translates and embeds them with both
language models, and sends the embeddings to rank 0 step by step; rank 0 classifies them as they
arrive, commits scores to OUT/work/parts (for resume) and writes the tables at the end.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from vnp.run import dist as vdist
from vnp.run.lifecycle import Rank, rank_command, run_rank
from vnp.run.state import RunState, prepare_run
from vnp.run.steps import EmbedTimes, Models, run_steps
from vnp.support.atomic import AtomicFiles
from vnp.support.command import command, module_main, split_items
from vnp.support.config import PredictConfig, help_text, load_config, to_yaml
from vnp.support.errors import InputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("items", nargs="*", metavar="INPUT|key=value",
                        help="FASTA/FASTQ inputs (plain, .gz, .bz2, .xz), unaligned BAM/CRAM, and configuration overrides")
    parser.add_argument("-o", "--out", help="output folder (created; an interrupted run there is resumed)")
    parser.add_argument("-c", "--config", help="YAML file of configuration keys (overridden by key=value)")
    parser.add_argument("--gpus", help="comma-separated GPU ids: relaunch under torchrun, one rank per GPU")
    parser.epilog = help_text()
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def relaunch_on_gpus(args: argparse.Namespace) -> int:
    """`--gpus 0,1`: the same command under torchrun with one rank per listed GPU."""
    ids = [g.strip() for g in args.gpus.split(",") if g.strip()]
    if not ids or not all(g.isdigit() for g in ids):
        raise InputError(f"--gpus expects comma-separated GPU ids such as 0,1, got {args.gpus!r}")
    import torch

    device = load_config(args.config, split_items(args.items)[1]).device
    if device != "cpu" and not torch.cuda.is_available():  # torchrun would start CPU ranks without a word
        raise InputError(f"--gpus {args.gpus}: CUDA is not available on this machine "
                         "(device=cpu runs that many CPU ranks)")
    rest = list(args.items)
    rest += ["-o", args.out] if args.out else []
    rest += ["-c", args.config] if args.config else []
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(ids)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={len(ids)}",
               "-m", "vnp.predict", *rest]
    os.execv(sys.executable, command)
    return 0  # not reached


@command
def run(args: argparse.Namespace) -> int:
    if args.gpus:
        return relaunch_on_gpus(args)
    inputs, config = rank_command(args, PredictConfig, lambda inputs: None if inputs else
                                  "no input files given (vnp predict INPUT... -o OUT)", "-o OUT")
    if config.calibration:
        from vnp.results.calibration import load_calibration

        try:
            load_calibration(config.calibration)  # a bad file fails here, naming itself, before any work
        except InputError as err:  # every rank finds it; rank 0 says it
            raise InputError(str(err), reported=vdist.detect_env().rank != 0) from None
    return predict(config, inputs, Path(args.out))


def predict(config: PredictConfig, inputs: list[str], out: Path) -> int:
    """One rank's whole job, in the rank lifecycle (`vnp.run.lifecycle.run_rank`)."""
    started = time.time()
    return run_rank(lambda rank: _predict(rank, config, inputs, started), config.device, config.dist.backend,
                    config.dist.timeout_s, out=out, threads=config.threads)


def _predict(rank: Rank, config: PredictConfig, inputs: list[str], started: float) -> int:
    ctx, folder = rank.ctx, rank.folder
    state = prepare_run(rank, config, inputs)
    models = Models.load_everywhere(ctx, state, config)
    if ctx.is_main:
        state.begin()  # every check passed: only now is an earlier run's progress replaced
        folder.write_text(folder.config_yaml, to_yaml(config))  # on record from the start of the work
    times = run_steps(ctx, state, config, models, rank.stop)
    if rank.stop.requested:
        vdist.print0(ctx, f"vnp: stopped by signal; progress is committed in {folder.root}. "
                          "Run the same command again to resume.")
        return 143
    if ctx.is_main:
        _finish(ctx, state, config, times, started)
    return 0


def _finish(ctx, state: RunState, config: PredictConfig, times: EmbedTimes, started: float) -> None:
    from vnp.results.tables import input_names, settings_record, write_tables
    from vnp.results.report import write_report

    folder = state.folder
    t0 = time.time()
    keys, scores = state.store.sorted_scores()
    with AtomicFiles() as files:  # tables, run.json and report.html together, or none of them
        counts = write_tables(folder.root, state.plan, keys, scores, config,
                              input_names(state.spec.run_record["inputs"]), files)
        times.stages["write_tables_s"] = round(time.time() - t0, 3)
        times.stages["total_s"] = round(time.time() - started, 3)
        run_json = {**state.run_json(ctx, config, counts, times), "progress": times.progress}
        run_json["calls"] = settings_record(config, "vnp predict")
        files.write_json(folder.run_json, run_json)
        write_report(folder.root, files=files)
    labels = ", ".join(f"{n} {k}" for k, n in sorted(counts.labels.items()))
    vdist.print0(ctx, f"vnp: {counts.sequences} sequences, {counts.chunks} chunks, {counts.frames} frames "
                      f"({labels}); results in {folder.root}")


def main(argv: list[str] | None = None) -> int:
    return module_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
