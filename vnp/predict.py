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
import logging
import os
import sys
import time
import traceback
from pathlib import Path

from vnp.cli import rank_command, split_items
from vnp.run import dist as vdist
from vnp.support.config import PredictConfig, help_text, load_config, to_yaml
from vnp.run.engine import StopFlag
from vnp.support.errors import InputError, Stopped
from vnp.run.folder import RunFolder
from vnp.run.state import RunState, log_path, open_log, prepare_run, show_alive, silent_ranks, wait_until_ready
from vnp.run.steps import EmbedTimes, Models, run_steps

log = logging.getLogger("vnp")


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
        print(f"vnp: error: --gpus expects comma-separated GPU ids such as 0,1, got {args.gpus!r}", file=sys.stderr)
        return 2
    import torch

    try:
        device = load_config(args.config, split_items(args.items)[1]).device
    except InputError as err:
        print(f"vnp: error: {err}", file=sys.stderr)
        return 2
    if device != "cpu" and not torch.cuda.is_available():  # torchrun would start CPU ranks without a word
        print(f"vnp: error: --gpus {args.gpus}: CUDA is not available on this machine "
              "(device=cpu runs that many CPU ranks)", file=sys.stderr)
        return 2
    rest = list(args.items)
    rest += ["-o", args.out] if args.out else []
    rest += ["-c", args.config] if args.config else []
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(ids)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={len(ids)}",
               "-m", "vnp.predict", *rest]
    os.execv(sys.executable, command)
    return 0  # not reached


def run(args: argparse.Namespace) -> int:
    if args.gpus:
        return relaunch_on_gpus(args)
    command = rank_command(args, PredictConfig, lambda inputs: None if inputs else
                           "no input files given (vnp predict INPUT... -o OUT)", "-o OUT")
    if command == 2:
        return 2
    inputs, config = command
    return predict(config, inputs, Path(args.out))


def predict(config: PredictConfig, inputs: list[str], out: Path) -> int:
    """One rank's whole job; the matched init/cleanup pair around it."""
    stop = StopFlag.install()
    started = time.time()
    try:
        ctx = vdist.init(config.device, config.dist.backend, config.dist.timeout_s)
    except Exception as err:  # c10d messages run over many lines: the first says it
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"vnp: error: rank {vdist.detect_env().rank}: cannot start: {first}", file=sys.stderr)
        return 1
    folder = RunFolder(out)  # holds OUT's lock from rank 0's checks to the end of this function
    state: RunState | None = None
    alive = None
    try:
        threads = vdist.set_cpu_threads(config.threads, ctx.env) if ctx.device.type == "cpu" else None
        state = (prepare_run(ctx, config, inputs, folder, stop) if ctx.is_main
                 else wait_until_ready(ctx, config, folder, stop))
        open_log(out, ctx.rank)
        alive = None if ctx.is_main else show_alive(folder, ctx.rank)
        log.info("rank %d/%d pid %d on %s (%s threads), launcher %s", ctx.rank, ctx.world_size, os.getpid(),
                 ctx.device, threads, ctx.env.launcher)
        if ctx.world_size > 1:  # chosen by vnp.run.dist.set_socket_interface on jobs over several hosts
            log.info("socket interfaces: %s", ", ".join(f"{v}={os.environ.get(v, '(unset)')}"
                                                        for v in vdist.SOCKET_VARIABLES))
        models = Models.load_everywhere(ctx, state, config)
        if ctx.is_main:
            state.begin()  # every check passed: only now is an earlier run's progress replaced
            folder.write_text(folder.config_yaml, to_yaml(config))  # on record from the start of the work
        times = run_steps(ctx, state, config, models, stop)
        if stop.requested:
            vdist.print0(ctx, f"vnp: stopped by signal; progress is committed in {out}. "
                              "Run the same command again to resume.")
            return 143
        if ctx.is_main:
            _finish(ctx, state, config, times, started)
        return 0
    except InputError as err:
        if not err.reported:
            print(f"vnp: error: {err}", file=sys.stderr)
        return 2
    except Stopped:
        vdist.print0(ctx, f"vnp: stopped by signal while preparing the run in {out}; nothing was lost. "
                          "Run the same command again to start it.")
        return 143
    except vdist.PeerFailure as err:
        log.error("stopping: %s", err)
        silent = silent_ranks(folder, ctx.world_size) if ctx.is_main and state is not None else []
        if silent:  # a rank that failed by itself said so; a killed one cannot
            names = ", ".join(map(str, silent))
            print(f"vnp: error: rank {names} stopped answering (killed, out of memory, or its node lost?); "
                  f"progress is committed in {out}: run the same command again to resume", file=sys.stderr)
        return 1
    except Exception as err:  # one line on stderr, the traceback in this rank's log
        first = str(err).splitlines()[0] if str(err) else ""
        print(f"vnp: error: rank {ctx.rank} failed: {type(err).__name__}: {first}{_logged(out, ctx.rank)}",
              file=sys.stderr)
        return 1
    finally:
        if alive is not None:
            alive.stop(remove=True)  # before leaving the group: rank 0 then knows this rank ended by itself
        vdist.cleanup()
        folder.close()


def _logged(out: Path, rank: int) -> str:
    """Write the current traceback to this rank's log (opened now if need be); ' (log: PATH)', or
    '' when no log can be written (the message never names a log that does not exist)."""
    path = log_path()
    if path != RunFolder(out).log(rank).absolute():  # none yet (or another run's, in-process)
        if not out.is_dir():
            return ""
        try:
            path = open_log(out, rank)
        except InputError:
            return ""
    log.error("rank %d failed:\n%s", rank, traceback.format_exc())
    return f" (log: {path})"


def _finish(ctx, state: RunState, config: PredictConfig, times: EmbedTimes, started: float) -> None:
    from vnp.results.tables import input_names, settings_record, write_tables
    from vnp.results.report import write_report

    folder = state.folder
    folder.remove_handshake_files()  # every rank read them before the first step
    t0 = time.time()
    keys, scores = state.store.sorted_scores()
    counts = write_tables(folder.root, state.plan, keys, scores, config, input_names(state.run_record["inputs"]))
    times.stages["write_tables_s"] = round(time.time() - t0, 3)
    times.stages["total_s"] = round(time.time() - started, 3)
    run_json = {**state.run_json(ctx, config, counts, times), "progress": times.progress}
    run_json["calls"] = settings_record(config, "vnp predict")
    folder.write_json(folder.run_json, run_json)
    write_report(folder.root)
    labels = ", ".join(f"{n} {k}" for k, n in sorted(counts.labels.items()))
    vdist.print0(ctx, f"vnp: {counts.sequences} sequences, {counts.chunks} chunks, {counts.frames} frames "
                      f"({labels}); results in {folder.root}")


def main(argv: list[str] | None = None) -> int:
    from vnp.cli import module_main

    return module_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
