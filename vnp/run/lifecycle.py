"""One rank's life, the same for `vnp predict`, `vnp train` and `vnp embed`.

    rank_command(args, ...)  -> (inputs, config)    InputError said once (by rank 0) on bad items
    run_rank(job, ...)       -> exit code           every rank: start, job(rank), stop, clean up

`run_rank` installs the stop flag (SIGTERM, SIGUSR1), joins the process group, sets the CPU
threads, runs `job(rank)` and sends whatever ends it through the one mapping of
`vnp.support.command.exit_code`: bad input 2, stop signal 143, peer failure 1 (rank 0 names a rank
killed without a word), anything else 1 with its traceback in this rank's log, OUT/logs/rankN.log.
A job that prepares on rank 0 does so through `vnp.run.state.share_preparation` (a ready file and
a heartbeat, so a long preparation cannot trip `dist.timeout_s`).
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from vnp.run import dist as vdist
from vnp.run.engine import StopFlag
from vnp.run.folder import RunFolder
from vnp.support.command import exit_code, split_items
from vnp.support.errors import InputError, PeerFailure, Stopped

log = logging.getLogger("vnp")

HEARTBEAT_EVERY_S = 2.0


def rank_command(args: argparse.Namespace, config_class: type, check_inputs: Callable[[list[str]], str | None],
                 out_usage: str) -> tuple[list[str], object]:
    """(inputs, configuration) of a command every rank runs (`vnp predict`, `vnp train`). Raises
    InputError, said by rank 0 only, or by every process when no rank can be known."""
    from vnp.support.config import load_config

    env = vdist.detect_env()  # its InputError: no rank is known, every process says it
    inputs, overrides = split_items(args.items)
    try:
        problem = check_inputs(inputs)
        if problem:
            raise InputError(problem)
        if not args.out:
            raise InputError(f"no output folder given ({out_usage})")
        config = load_config(args.config, overrides, cls=config_class)
        from vnp.models.sources import configure  # this process's network policy for models

        configure(config.offline, config.models.timeout_s)
        return inputs, config
    except InputError as err:  # the same error on every rank: rank 0 says it
        raise InputError(str(err), reported=env.rank != 0) from None


@dataclass
class Rank:
    """What a job gets: this rank's context, its run folder (None for `vnp embed`, which has
    none), the stop flag, and the wait bound of `dist.timeout_s`."""

    ctx: vdist.Context
    folder: RunFolder | None
    stop: StopFlag
    timeout_s: float
    threads: int | None = None
    alive: "Heartbeat | None" = None  # ranks > 0, once prepared: rank 0 watches it
    prepared: bool = False  # the preparation handshake is over on this rank

    def started(self) -> None:
        """The handshake is over: ranks > 0 show they are alive, and every rank says who it is."""
        ctx = self.ctx
        self.prepared = True
        if not ctx.is_main:
            self.alive = Heartbeat(self.folder.alive(ctx.rank))
        log.info("rank %d/%d pid %d on %s (%s threads), launcher %s", ctx.rank, ctx.world_size, os.getpid(),
                 ctx.device, self.threads, ctx.env.launcher)
        if ctx.world_size > 1:  # chosen by vnp.run.dist.set_socket_interface on jobs over several hosts
            log.info("socket interfaces: %s", ", ".join(f"{v}={os.environ.get(v, '(unset)')}"
                                                        for v in vdist.SOCKET_VARIABLES))


def run_rank(job: Callable[[Rank], int], device: str, backend: str, timeout_s: float, out: Path | None = None,
             threads: int | None = None, stoppable: bool = True, folder_type: type[RunFolder] = RunFolder) -> int:
    """One rank's whole life around `job` (module docstring); its exit code. `threads`: the CPU
    threads setting (None leaves torch's); `stoppable`: a stop signal lets the job stop after its
    step (else the signal ends the process, as for `vnp embed`, which does not resume);
    `folder_type`: what names the paths in OUT (`TrainingFolder` for `vnp train`'s DIR). The
    threads it set are given back when the job ends, for a process that goes on (a test, a notebook)."""
    stop = StopFlag.install() if stoppable else StopFlag()
    folder = folder_type(out) if out is not None else None  # rank 0 holds OUT's lock until the end
    rank: Rank | None = None
    threads_before = torch.get_num_threads()
    try:
        ctx = vdist.init(device, backend, timeout_s)
        rank = Rank(ctx, folder, stop, timeout_s)
        if threads is not None and ctx.device.type == "cpu":
            rank.threads = vdist.set_cpu_threads(threads, ctx.env)
        code = job(rank)
        if code == 0 and ctx.is_main and rank.prepared:
            folder.remove_handshake_files()  # every rank read them before its first collective
        return code
    except BaseException as err:
        if not isinstance(err, Exception):
            raise  # KeyboardInterrupt, SystemExit
        number = rank.ctx.rank if rank is not None else _rank_number()
        if isinstance(err, PeerFailure):
            log.error("stopping: %s", err)
            err = _silent_ranks_named(rank, out) or err
        return exit_code(err, number, str(out), lambda: _keep_traceback(folder, number))
    finally:
        if rank is not None and rank.alive is not None:
            rank.alive.stop(remove=True)  # before leaving the group: rank 0 then knows it ended by itself
        vdist.cleanup()
        torch.set_num_threads(threads_before)
        if folder is not None:
            if rank is not None and rank.ctx.is_main and rank.prepared and folder.locked:
                folder.remove_handshake_files()  # whatever the exit: not left for the next start
            folder.close()


def _rank_number() -> int | None:
    """This process's rank before the group is joined (None when the launcher's variables are bad)."""
    try:
        return vdist.detect_env().rank
    except InputError:
        return None


def _silent_ranks_named(rank: Rank | None, out: Path | None) -> PeerFailure | None:
    """Rank 0, after the handshake: the failure of ranks that stopped answering without a word."""
    if rank is None or not rank.ctx.is_main or not rank.prepared or rank.folder is None:
        return None
    silent = silent_ranks(rank.folder, rank.ctx.world_size)
    if not silent:  # a rank that failed by itself said so
        return None
    return PeerFailure(f"rank {', '.join(map(str, silent))} stopped answering (killed, out of memory, or its node "
                       f"lost?); progress is committed in {out}: run the same command again to resume")


def _keep_traceback(folder: RunFolder | None, rank: int) -> str:
    """Write the current traceback to this rank's log (opened now if need be): ' (log: PATH)'; ''
    when no log can be written (never a log that does not exist); with no run folder it is printed."""
    if folder is None:
        return ""
    path = log_path()
    if path != folder.log(rank).absolute():  # none yet (or another run's, in-process)
        if not folder.root.is_dir():
            return ""
        try:
            path = open_log(folder, rank)
        except InputError:
            return ""
    log.error("rank %d failed:\n%s", rank, traceback.format_exc())
    return f" (log: {path})"


def open_log(folder: RunFolder, rank: int) -> Path:
    """This rank's log file, OUT/logs/rankN.log (opened once; later calls return its path)."""
    path = folder.log(rank)
    if any(getattr(h, "baseFilename", None) == str(path.absolute()) for h in log.handlers):
        return path
    if path.parent.exists() and not path.parent.is_dir():
        raise InputError(f"{path.parent}: exists and is not a folder (the per-rank logs go there)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = _LogFile(path)
    except OSError as err:
        raise InputError(f"{path}: cannot write the log ({err.strerror})") from None
    handler.setFormatter(logging.Formatter(f"%(asctime)s rank{rank} %(levelname)s %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False
    return path


class _LogFile(logging.FileHandler):
    """A rank's log file. A record that cannot be written (a full disk) is dropped without a word:
    logging's default prints a traceback per record on stderr, dozens of lines before the run's
    own one-line error about that disk."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass


def log_path() -> Path | None:
    """The log file this process writes, if one is open."""
    names = [h.baseFilename for h in log.handlers if getattr(h, "baseFilename", None)]
    return Path(names[0]) if names else None


# ----------------------------------------------------------------------------- rank 0 -> every rank


def outcome(err: BaseException) -> dict:
    """What the other ranks are told of rank 0's failure (rank 0 reports it itself)."""
    if isinstance(err, Stopped):
        return {"failed": "stopped", "error": None}
    if isinstance(err, InputError):
        return {"failed": "input", "error": str(err)}
    return {"failed": "other", "error": None}


def raise_outcome(message: dict) -> None:
    """On a rank > 0: rank 0's failure, as the same kind of error, already said by rank 0."""
    failed = message.get("failed")
    if failed == "stopped":
        raise Stopped("rank 0 was stopped by a signal while preparing")
    if failed == "input":
        raise InputError(message["error"], reported=True)
    if failed:
        raise PeerFailure("rank 0 failed", reported=True)


def shared(ctx: vdist.Context, produce: Callable[[], object]):
    """Rank 0 runs `produce()` (something quick); every rank gets its result by a broadcast, or
    stops with rank 0's failure, so no rank waits for a broadcast that will not come."""
    if ctx.is_main:
        try:
            value = produce()
        except BaseException as err:
            vdist.broadcast_object(ctx, outcome(err))
            raise
        vdist.broadcast_object(ctx, {"value": value})
        return value
    message = vdist.broadcast_object(ctx)
    raise_outcome(message)
    return message["value"]


class Heartbeat:
    """A file touched every few seconds: rank 0's while it prepares (the other ranks watch it), and
    each other rank's while it runs (rank 0 looks at them when a collective fails)."""

    def __init__(self, path: Path, on_request: Path | None = None, stop=None):
        self.path = path
        self.on_request = on_request  # rank 0: another rank asks it to stop preparing
        self.stop_flag = stop  # rank 0: its StopFlag, whose launcher may vanish while it prepares
        self._done = threading.Event()
        path.touch()
        self._thread = threading.Thread(target=self._run, name="vnp-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import signal

        while not self._done.wait(HEARTBEAT_EVERY_S):
            self.path.touch()
            asked = self.on_request is not None and self.on_request.exists()
            if asked or (self.stop_flag is not None and self.stop_flag.launcher_gone()):
                self.on_request = self.stop_flag = None
                os.kill(os.getpid(), signal.SIGUSR1)  # as if this rank got the signal: stops at once

    def stop(self, remove: bool = False) -> None:
        self._done.set()
        self._thread.join()
        if remove:
            self.path.unlink(missing_ok=True)


def silent_ranks(folder: RunFolder, world_size: int) -> list[int]:
    """Ranks whose alive file is still there but no longer touched: killed (OOM killer, kill -9)
    or their node lost. A rank that ended by itself removed its file and reported its own error."""
    files = {rank: folder.alive(rank) for rank in range(1, world_size)}

    def touched() -> dict[int, int]:
        return {rank: path.stat().st_mtime_ns for rank, path in files.items() if path.exists()}

    before = touched()
    deadline = time.time() + 3 * HEARTBEAT_EVERY_S
    while before and time.time() < deadline:
        time.sleep(0.2)
        before = {rank: t for rank, t in before.items() if touched().get(rank) == t}
    return sorted(before)
