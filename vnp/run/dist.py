"""One process per rank: who am I, the matched init/cleanup pair, rank-0 printing, and on jobs
over several hosts the network interface each host offers its peers.

Rank, local rank and world size come from torchrun or accelerate (RANK, LOCAL_RANK, WORLD_SIZE),
else from SLURM (SLURM_PROCID, SLURM_LOCALID, SLURM_NTASKS), else this is a single process.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import re
import socket
import struct
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from vnp.support.config import usable_cores
from vnp.support.errors import InputError


@dataclass(frozen=True)
class Env:
    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    launcher: str  # torchrun, accelerate, slurm or single


def detect_env(environ: dict[str, str] | None = None) -> Env:
    """This process's place in the job, from the launcher's variables (checked: integers, a rank
    below the world size; a rank without a world size is refused). InputError names the variable."""
    env = os.environ if environ is None else environ
    if "RANK" in env or "WORLD_SIZE" in env:
        world = _launcher_int(env, "WORLD_SIZE", minimum=1, pair="RANK")
        rank = _launcher_int(env, "RANK", pair="WORLD_SIZE")
        local_world = _launcher_int(env, "LOCAL_WORLD_SIZE", minimum=1, default=world)
        local_rank = _launcher_int(env, "LOCAL_RANK", default=0)
        _check_below(rank, world, "RANK", "WORLD_SIZE")
        _check_below(local_rank, local_world, "LOCAL_RANK", "LOCAL_WORLD_SIZE")
        return Env(rank, local_rank, world, local_world, _torchrun_or_accelerate(env))
    if "SLURM_PROCID" in env and ("SLURM_NTASKS" in env or env["SLURM_PROCID"].strip() != "0"):
        world = _launcher_int(env, "SLURM_NTASKS", minimum=1, pair="SLURM_PROCID")
        rank = _launcher_int(env, "SLURM_PROCID")
        local_rank = _launcher_int(env, "SLURM_LOCALID", default=0)
        _check_below(rank, world, "SLURM_PROCID", "SLURM_NTASKS")
        return Env(rank, local_rank, world, _slurm_tasks_per_node(env, world), "slurm")
    return Env(0, 0, 1, 1, "accelerate" if _torchrun_or_accelerate(env) == "accelerate" else "single")


def _torchrun_or_accelerate(env) -> str:
    """`accelerate launch` runs torchrun underneath (or plain python for one process) and marks its
    processes with its own variables, ACCELERATE_MIXED_PRECISION among them."""
    return "accelerate" if "ACCELERATE_MIXED_PRECISION" in env else "torchrun"


def _launcher_int(env, name: str, minimum: int = 0, default: int | None = None, pair: str | None = None) -> int:
    text = env.get(name)
    if text is None:
        if default is None:
            raise InputError(f"launcher variables: {pair} is set without {name}")
        return default
    try:
        value = int(text.strip())
    except ValueError:
        raise InputError(f"launcher variable {name}={text!r}: not an integer") from None
    if value < minimum:
        raise InputError(f"launcher variable {name}={value}: must be at least {minimum}")
    return value


def _check_below(rank: int, world: int, rank_name: str, world_name: str) -> None:
    if rank >= world:
        raise InputError(f"launcher variables: {rank_name}={rank} must be below {world_name}={world}")


def _slurm_tasks_per_node(env, world: int) -> int:
    # SLURM_TASKS_PER_NODE looks like "4(x2),3"; the first group is this layout's maximum.
    text = env.get("SLURM_TASKS_PER_NODE", "")
    match = re.match(r"(\d+)", text)
    return int(match.group(1)) if match else world


def first_slurm_host(nodelist: str) -> str:
    """First host of a SLURM node list: `gpu[03-05,9],cpu1` -> `gpu03`."""
    head = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not head:
        raise ValueError(f"cannot parse SLURM_NODELIST {nodelist!r}")
    prefix, ranges = head.group(1), head.group(2)
    if not ranges:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def slurm_rendezvous(environ: dict[str, str]) -> None:
    """MASTER_ADDR from the first host of the job, MASTER_PORT from the job ID, when not set."""
    if "MASTER_ADDR" not in environ:
        nodelist = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST")
        environ["MASTER_ADDR"] = first_slurm_host(nodelist) if nodelist else "127.0.0.1"
    if "MASTER_PORT" not in environ:
        environ["MASTER_PORT"] = str(15000 + int(environ.get("SLURM_JOB_ID", "0")) % 20000)


@dataclass(frozen=True)
class Network:
    """This host as its kernel sees it: the source address of the route to MASTER_ADDR, the
    addresses of each interface, and the interface of the IPv4 default route (None without one)."""
    source: str
    addresses: dict[str, tuple[str, ...]]
    default_interface: str | None


SOCKET_VARIABLES = ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")


def spans_several_hosts(environ) -> bool:
    """Whether this job's ranks live on more than one host (then peers need a routable address)."""
    def number(key: str) -> int | None:
        try:
            return int(environ[key])
        except (KeyError, ValueError):
            return None

    if "RANK" in environ and "WORLD_SIZE" in environ:  # torchrun, accelerate
        world, local, nodes = number("WORLD_SIZE"), number("LOCAL_WORLD_SIZE"), number("GROUP_WORLD_SIZE")
        return (world is not None and local is not None and local < world) or (nodes or 1) > 1
    counts = [number(k) for k in ("SLURM_STEP_NUM_NODES", "SLURM_NNODES", "SLURM_JOB_NUM_NODES")]
    return next((n for n in counts if n is not None), 1) > 1


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(address.split("%")[0])  # without an IPv6 scope such as %eth0


def pick_interface(net: Network) -> str | None:
    """The interface holding the source address of the route to MASTER_ADDR. When that route is
    loopback (MASTER_ADDR is this host under a name that resolves to 127.0.x.x, as Debian maps the
    hostname), peers cannot use it: then the default route's interface, else the only interface
    with a routable address, else None."""
    source = _ip(net.source)
    if not source.is_loopback:
        return next((name for name, addrs in net.addresses.items() if source in map(_ip, addrs)), None)
    if net.default_interface in net.addresses:
        return net.default_interface
    routable = [name for name, addrs in net.addresses.items()
                if any(not (ip.is_loopback or ip.is_link_local) for ip in map(_ip, addrs))]
    return routable[0] if len(routable) == 1 else None


def look_at_network(master_addr: str) -> Network:
    """Ask the kernel: connect() of a UDP socket picks the route and source address without
    sending a packet; interface addresses from SIOCGIFADDR (IPv4) and /proc/net/if_inet6 (IPv6)."""
    family, _, _, _, target = socket.getaddrinfo(master_addr, 9, proto=socket.IPPROTO_UDP)[0]
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect(target)
        source = probe.getsockname()[0]
    return Network(source, _interface_addresses(), _default_interface())


def _interface_addresses() -> dict[str, tuple[str, ...]]:
    siocgifaddr = 0x8915
    found: dict[str, list[str]] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            try:
                reply = fcntl.ioctl(sock.fileno(), siocgifaddr, struct.pack("256s", name.encode()[:15]))
            except OSError:  # no IPv4 address
                continue
            found.setdefault(name, []).append(socket.inet_ntoa(reply[20:24]))
    try:
        with open("/proc/net/if_inet6") as fh:  # hex address, index, prefix, scope, flags, name
            for line in fh:
                hexaddr, *_, name = line.split()
                found.setdefault(name, []).append(str(ipaddress.IPv6Address(bytes.fromhex(hexaddr))))
    except OSError:
        pass
    return {name: tuple(addrs) for name, addrs in found.items()}


def _default_interface() -> str | None:
    try:
        with open("/proc/net/route") as fh:  # Iface Destination Gateway ... (hex), header first
            rows = [line.split() for line in fh.readlines()[1:]]
    except OSError:
        return None
    return next((row[0] for row in rows if len(row) > 7 and row[1] == "00000000" and row[7] == "00000000"), None)


def set_socket_interface(environ, backend: str, env: Env,
                         look: Callable[[str], Network] = look_at_network) -> str | None:
    """On a job over several hosts with no socket interface given, name the one that reaches
    MASTER_ADDR: gloo otherwise binds to whatever the hostname resolves to, and that is a
    loopback address on many systems, so peers on other hosts are told to call 127.0.x.x.
    Returns the chosen interface (None when nothing was set); an explicit variable always wins."""
    master = environ.get("MASTER_ADDR")
    if not master or not spans_several_hosts(environ) or any(environ.get(v) for v in SOCKET_VARIABLES):
        return None
    try:
        net = look(master)
    except OSError as err:
        _say(env, f"cannot find the route to MASTER_ADDR {master} ({err}); "
                  "set GLOO_SOCKET_IFNAME (and NCCL_SOCKET_IFNAME) to this node's interface")
        return None
    name = pick_interface(net)
    if name is None:
        _say(env, f"no interface to reach MASTER_ADDR {master} found (route source {net.source}); "
                  "set GLOO_SOCKET_IFNAME (and NCCL_SOCKET_IFNAME) to this node's interface")
        return None
    environ["GLOO_SOCKET_IFNAME"] = name
    if backend == "nccl":
        environ["NCCL_SOCKET_IFNAME"] = "=" + name  # '=': this interface exactly, not every name it prefixes
    _say(env, f"peers reach this rank through interface {name} ({', '.join(net.addresses[name])}), chosen from "
              f"the route to MASTER_ADDR {master}; set GLOO_SOCKET_IFNAME to choose another")
    return name


def _say(env: Env, message: str) -> None:
    if env.local_rank == 0:  # once per host: each host makes its own choice
        print(f"vnp: rank {env.rank}: {message}", file=sys.stderr)


@dataclass(frozen=True)
class Context:
    env: Env
    device: torch.device
    backend: str | None  # None for a single process

    @property
    def rank(self) -> int:
        return self.env.rank

    @property
    def world_size(self) -> int:
        return self.env.world_size

    @property
    def is_main(self) -> bool:
        return self.env.rank == 0


def pick_device(preference: str, local_rank: int) -> torch.device:
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("device=cuda was asked for but CUDA is not available")
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def set_cpu_threads(threads: int, env: Env) -> int:
    """Threads per rank on purpose: the node's cores shared by its local ranks unless given; more
    threads than this rank may use is refused (an oversubscribed BLAS crawls, or crashes)."""
    cores = usable_cores()
    if threads > cores:
        raise InputError(f"threads={threads}: this rank may use only {cores} cores here", reported=env.rank != 0)
    if threads <= 0:
        threads = max(1, cores // max(1, env.local_world_size))
    torch.set_num_threads(threads)
    return threads


def init(device: str = "auto", backend: str = "auto", timeout_s: float = 1800.0) -> Context:
    """Start this rank: pick its device and, for several ranks, join the process group."""
    env = detect_env()
    dev = pick_device(device, env.local_rank)
    if device == "auto" and dev.type == "cpu" and env.local_world_size > 1 and env.rank == 0:
        print(f"vnp: warning: no GPU found: {env.local_world_size} ranks on this node run on the CPU and share its "
              "cores (for GPUs check CUDA_VISIBLE_DEVICES; on a CPU, one rank uses every core)", file=sys.stderr)
    if env.world_size == 1:
        return Context(env, dev, None)
    if env.launcher == "slurm":
        slurm_rendezvous(os.environ)
    chosen = ("nccl" if dev.type == "cuda" else "gloo") if backend == "auto" else backend
    set_socket_interface(os.environ, chosen, env)
    with _rendezvous_deadline(env, timeout_s):
        dist.init_process_group(chosen, rank=env.rank, world_size=env.world_size,
                                timeout=timedelta(seconds=timeout_s),
                                device_id=dev if dev.type == "cuda" else None)
    return Context(env, dev, chosen)


@contextlib.contextmanager
def _rendezvous_deadline(env: Env, timeout_s: float) -> Iterator[None]:
    """Joining the process group waits forever when a program that is not torch's store listens on
    MASTER_PORT (the store client ignores its timeout there): after `timeout_s` this rank says so
    and exits, from a watchdog thread, since the waiting call never returns to Python."""
    def expire() -> None:
        where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
        print(f"vnp: error: rank {env.rank}: no rendezvous with the other ranks at {where} within "
              f"dist.timeout_s={timeout_s:g} s (is another program listening on MASTER_PORT?)", file=sys.stderr,
              flush=True)
        os._exit(1)

    timer = threading.Timer(timeout_s, expire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def print0(ctx: Context, *args, **kwargs) -> None:
    """Print on rank 0 only (to stderr unless told otherwise)."""
    if ctx.is_main:
        kwargs.setdefault("file", sys.stderr)
        print(*args, **kwargs)


class PeerFailure(RuntimeError):
    """Another rank failed or stopped answering; this rank stops quietly (that rank reports)."""

    def __init__(self, message: str, reported: bool = False) -> None:
        super().__init__(message)
        self.reported = reported  # True where the failing rank has said why


def broadcast_object(ctx: Context, obj=None):
    """Rank 0's object on every rank (a small, quick collective)."""
    if ctx.world_size == 1:
        return obj
    box = [obj]
    try:
        dist.broadcast_object_list(box, src=0)
    except RuntimeError as err:
        raise PeerFailure(f"broadcast failed: {err}") from None
    return box[0]


def all_gather_object(ctx: Context, obj) -> list:
    if ctx.world_size == 1:
        return [obj]
    items = [None] * ctx.world_size
    try:
        dist.all_gather_object(items, obj)
    except RuntimeError as err:
        raise PeerFailure(f"all_gather failed: {err}") from None
    return items


def shard(n_items: int, ctx: Context) -> list[int | None]:
    """This rank's item for each step, dealt by a DistributedSampler (no shuffle); None where the
    sampler repeated an item only to give every rank the same number of steps."""
    sampler = DistributedSampler(range(n_items), num_replicas=ctx.world_size, rank=ctx.rank, shuffle=False)
    return [item if step * ctx.world_size + ctx.rank < n_items else None for step, item in enumerate(sampler)]
