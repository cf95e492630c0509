"""Several hosts: the socket interface vnp chooses, then two real "nodes" (network namespaces joined
by a veth pair) running one job through torchrun and through SLURM variables, and a node lost
mid-run then resumed on one node. The jobs run without GLOO_SOCKET_IFNAME: vnp must choose it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import BIN, ROOT, built_once, child_env, tables, wait_for_parts, write_long_input
from vnp.predict import main as predict_main
from vnp.run.dist import Env, Network, look_at_network, pick_interface, set_socket_interface, spans_several_hosts

ETH = {"lo": ("127.0.0.1", "::1"), "eth0": ("10.1.2.3", "fe80::1"), "ib0": ("192.168.7.3",)}
RANK1 = Env(1, 0, 2, 1, "torchrun")


def torchrun_env(**extra) -> dict[str, str]:
    """What torchrun --nnodes=2 --nproc_per_node=1 gives the worker on node 1."""
    return {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1", "GROUP_WORLD_SIZE": "2",
            "MASTER_ADDR": "10.1.2.1", "MASTER_PORT": "29500", **extra}


def network(source: str, default: str | None = "eth0", addresses=None):
    return lambda master: Network(source, ETH if addresses is None else addresses, default)


@pytest.mark.parametrize("source, default, addresses, expected", [
    ("10.1.2.3", "eth0", ETH, "eth0"),  # the interface holding the route's source address
    ("192.168.7.3", "eth0", ETH, "ib0"),  # not the default route's: the one that reaches MASTER_ADDR
    ("127.0.0.1", "ib0", ETH, "ib0"),  # MASTER_ADDR is this host by a loopback name: the default route's
    ("127.0.1.1", None, {"lo": ("127.0.0.1",), "veth0": ("10.77.0.1", "fe80::2")}, "veth0"),  # the only one
    ("127.0.1.1", None, ETH, None),  # several and no default route: no guess
    ("127.0.0.1", None, {"lo": ("127.0.0.1",), "eth0": ("fe80::1",)}, None),  # link-local only
    ("10.9.9.9", "eth0", ETH, None),  # an address no interface holds
    ("fe80::1%eth0", "eth0", ETH, "eth0"),  # IPv6 with its scope
])
def test_pick_interface(source, default, addresses, expected):
    assert pick_interface(Network(source, addresses, default)) == expected


@pytest.mark.parametrize("environ, several", [
    (torchrun_env(), True),
    (torchrun_env(GROUP_WORLD_SIZE="1", LOCAL_WORLD_SIZE="2"), False),  # --standalone, 2 ranks
    (torchrun_env(GROUP_WORLD_SIZE="1"), True),  # 1 of 2 ranks on this host
    ({"RANK": "0", "WORLD_SIZE": "4"}, False),  # no LOCAL_WORLD_SIZE: nothing says several hosts
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_NNODES": "2"}, True),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_JOB_NUM_NODES": "2"}, True),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_STEP_NUM_NODES": "1", "SLURM_JOB_NUM_NODES": "2"}, False),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "3", "SLURM_NNODES": "1"}, False),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "3", "SLURM_NNODES": "two"}, False),
    ({}, False),
])
def test_spans_several_hosts(environ, several):
    assert spans_several_hosts(environ) is several


def test_chosen_interface_is_set_and_said(capsys):
    environ = torchrun_env()
    assert set_socket_interface(environ, "gloo", RANK1, network("192.168.7.3")) == "ib0"
    assert environ["GLOO_SOCKET_IFNAME"] == "ib0" and "NCCL_SOCKET_IFNAME" not in environ
    err = capsys.readouterr().err
    assert err.startswith("vnp: rank 1: peers reach this rank through interface ib0 (192.168.7.3)")
    assert "MASTER_ADDR 10.1.2.1" in err and "GLOO_SOCKET_IFNAME" in err


def test_nccl_gets_the_exact_interface_too():
    environ = torchrun_env()
    set_socket_interface(environ, "nccl", RANK1, network("10.1.2.3"))
    assert environ["GLOO_SOCKET_IFNAME"] == "eth0" and environ["NCCL_SOCKET_IFNAME"] == "=eth0"


@pytest.mark.parametrize("variable", ["GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"])
def test_an_explicit_variable_wins(variable):
    environ = torchrun_env(**{variable: "myif"})
    before = dict(environ)
    assert set_socket_interface(environ, "nccl", RANK1, network("10.1.2.3")) is None
    assert environ == before


def test_one_host_is_left_alone():
    environ = torchrun_env(GROUP_WORLD_SIZE="1", LOCAL_WORLD_SIZE="2")
    assert set_socket_interface(environ, "gloo", RANK1, network("10.1.2.3")) is None
    assert "GLOO_SOCKET_IFNAME" not in environ


def test_no_usable_interface_is_said_and_nothing_set(capsys):
    environ = torchrun_env()
    assert set_socket_interface(environ, "gloo", RANK1, network("127.0.1.1", default=None)) is None
    assert "GLOO_SOCKET_IFNAME" not in environ
    assert "set GLOO_SOCKET_IFNAME" in capsys.readouterr().err


def test_unreachable_master_is_said_not_raised(capsys):
    def unreachable(master):
        raise OSError(101, "Network is unreachable")

    assert set_socket_interface(torchrun_env(), "gloo", RANK1, unreachable) is None
    assert "cannot find the route to MASTER_ADDR 10.1.2.1" in capsys.readouterr().err


def test_only_local_rank_0_speaks(capsys):
    set_socket_interface(torchrun_env(), "gloo", Env(3, 1, 4, 2, "torchrun"), network("10.1.2.3"))
    assert capsys.readouterr().err == ""


def test_this_hosts_network_as_the_kernel_sees_it():
    net = look_at_network("127.0.0.1")
    assert net.source == "127.0.0.1"
    assert any("127.0.0.1" in addrs for addrs in net.addresses.values())


# Two nodes for real: network namespaces joined by a veth pair, one rank each.

NODE_ADDRESSES = ("10.77.0.1", "10.77.0.2")
NODE_NAMES = ("vnpnode0", "vnpnode1")  # resolvable only inside the namespaces (their own /etc/hosts)
# Frequent commits (the engine commits every 64 steps by default): the node-lost test waits for parts.
ARGS = ["pack=tiny", "progress=false", "threads=1", "batch.unit_chunks=2", "engine.commit_every_steps=2",
        "dist.timeout_s=30"]


@dataclass
class Node:
    rank: int
    namespace: str
    interface: str
    address: str


@dataclass
class Cluster:
    """Two hosts as far as the network goes (the file system is shared, as OUT must be)."""
    nodes: tuple[Node, Node]

    def start(self, rank: int, command: list[str], env: dict[str, str]) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.nodes[rank].namespace, *command], env=env, cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)

    def power_off(self, rank: int) -> None:
        kill_everything_in(self.nodes[rank].namespace)


def ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


def kill_everything_in(namespace: str) -> None:
    """kill -9 of every process on that node (nothing when the namespace is gone)."""
    for pid in ip("netns", "pids", namespace).stdout.split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)


def why_no_namespaces() -> str | None:
    if os.geteuid() != 0:
        return "building network namespaces needs root"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed (apt-get install iproute2)"
    probe = f"vnpp{os.getpid()}"
    made = ip("netns", "add", probe)
    if made.returncode != 0:
        return f"`ip netns add` fails here: {made.stderr.strip()}"
    paired = ip("link", "add", f"{probe}a", "netns", probe, "type", "veth", "peer", "name", f"{probe}b", "netns", probe)
    ip("netns", "del", probe)
    if paired.returncode != 0:
        return f"veth pairs cannot be made here: {paired.stderr.strip()}"
    return None


def test_without_root_or_iproute2_the_nodes_are_skipped_with_the_reason(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert why_no_namespaces() == "building network namespaces needs root"
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert "iproute2" in why_no_namespaces()


def hosts_file(rank: int) -> str:
    """Debian's mapping: this host's own names resolve to 127.0.1.1; the other node by its address."""
    other = 1 - rank
    return (f"127.0.0.1 localhost\n127.0.1.1 {NODE_NAMES[rank]} {socket.gethostname()}\n"
            f"{NODE_ADDRESSES[other]} {NODE_NAMES[other]}\n")


@pytest.fixture(scope="module")
def cluster():
    reason = why_no_namespaces()
    if reason:
        pytest.skip(reason)
    tag = f"vnp{os.getpid()}"
    nodes = tuple(Node(rank, f"{tag}n{rank}", f"{tag}v{rank}", address)
                  for rank, address in enumerate(NODE_ADDRESSES))
    try:
        for node in nodes:
            assert ip("netns", "add", node.namespace).returncode == 0
            etc = Path("/etc/netns") / node.namespace  # `ip netns exec` mounts these over /etc
            etc.mkdir(parents=True)
            (etc / "hosts").write_text(hosts_file(node.rank))
        # made inside the namespaces: nothing of it ever lies in this host's own namespace
        made = ip("link", "add", nodes[0].interface, "netns", nodes[0].namespace, "type", "veth",
                  "peer", "name", nodes[1].interface, "netns", nodes[1].namespace)
        assert made.returncode == 0, made.stderr
        for node in nodes:
            steps = [("-n", node.namespace, "addr", "add", f"{node.address}/24", "dev", node.interface),
                     ("-n", node.namespace, "link", "set", node.interface, "up"),
                     ("-n", node.namespace, "link", "set", "lo", "up")]
            for step in steps:
                done = ip(*step)
                assert done.returncode == 0, f"ip {' '.join(step)}: {done.stderr}"
        yield Cluster(nodes)
    finally:
        for node in nodes:
            kill_everything_in(node.namespace)
            ip("netns", "del", node.namespace)  # takes its end of the veth pair with it
            shutil.rmtree(Path("/etc/netns") / node.namespace, ignore_errors=True)
        with contextlib.suppress(OSError):
            Path("/etc/netns").rmdir()  # only when empty


@pytest.fixture(scope="module")
def job_input(tmp_path_factory) -> Path:
    """Shared read-only by the test run's workers (`built_once`), like the one-rank run."""
    return built_once(tmp_path_factory, "multinode-input",
                      lambda folder: write_long_input(folder / "job.fa", n=80)) / "job.fa"


@pytest.fixture(scope="module")
def reference(tmp_path_factory, job_input) -> Path:
    """One rank, in this process: the tables every node layout must give."""
    def build(folder: Path) -> None:
        assert predict_main([str(job_input), "-o", str(folder / "out"), *ARGS]) == 0
    return built_once(tmp_path_factory, "multinode-reference", build) / "out"


def node_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in child_env().items() if not k.endswith("_SOCKET_IFNAME")}  # vnp must choose
    env.update(extra)
    return env


def torchrun_command(rank: int, port: int, job_input: Path, out: Path, args=ARGS) -> list[str]:
    return [str(BIN / "torchrun"), "--nnodes=2", f"--node_rank={rank}", "--nproc_per_node=1",
            f"--master_addr={NODE_ADDRESSES[0]}", f"--master_port={port}", "-m", "vnp.predict",
            str(job_input), "-o", str(out), *args]


def finish(procs: list[subprocess.Popen], timeout: float = 180) -> list[tuple[int, str]]:
    """Every node's exit code and stderr; a node still running after `timeout` is killed."""
    deadline = time.time() + timeout
    results = []
    for proc in procs:
        try:
            _, err = proc.communicate(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            _, err = proc.communicate()
            err += "\n[killed by the test: still running]"
        results.append((proc.returncode, err))
    return results


def assert_chosen_interfaces(cluster: Cluster, results: list[tuple[int, str]], out: Path) -> None:
    """Said on stderr once per node, and in each rank's log."""
    for node, (_, err) in zip(cluster.nodes, results):
        assert f"vnp: rank {node.rank}: peers reach this rank through interface {node.interface} ({node.address}" in err
        assert f"GLOO_SOCKET_IFNAME={node.interface}," in (out / "logs" / f"rank{node.rank}.log").read_text()


def check_two_node_run(cluster, procs, out: Path, reference: Path, launcher: str) -> None:
    """Both nodes succeeded through the interfaces vnp chose; tables equal one process's."""
    results = finish(procs)
    assert all(code == 0 for code, _ in results), results
    assert_chosen_interfaces(cluster, results, out)
    assert tables(out) == tables(reference)
    record = json.loads((out / "run.json").read_text())
    assert record["world_size"] == 2 and record["launcher"] == launcher


@pytest.mark.slow
def test_torchrun_over_two_nodes(cluster, job_input, reference, tmp_path):
    out = tmp_path / "out"
    procs = [cluster.start(rank, torchrun_command(rank, 29501, job_input, out), node_env()) for rank in (0, 1)]
    check_two_node_run(cluster, procs, out, reference, "torchrun")


@pytest.mark.slow
def test_slurm_over_two_nodes(cluster, job_input, reference, tmp_path):
    """MASTER_ADDR from the node list: a name that, on node 0 itself, resolves to 127.0.1.1."""
    out = tmp_path / "out"
    procs = [cluster.start(rank, [sys.executable, "-m", "vnp.predict", str(job_input), "-o", str(out), *ARGS],
                           node_env(SLURM_PROCID=str(rank), SLURM_LOCALID="0", SLURM_NTASKS="2", SLURM_NNODES="2",
                                    SLURM_TASKS_PER_NODE="1(x2)", SLURM_NODELIST="vnpnode[0-1]", SLURM_JOB_ID="4242"))
             for rank in (0, 1)]
    check_two_node_run(cluster, procs, out, reference, "slurm")


@pytest.mark.slow
def test_node_lost_mid_run_then_resumed_on_one_node(cluster, job_input, reference, tmp_path):
    """Every process of node 1 killed (-9) mid-run: node 0 stops by itself; one node finishes the job."""
    out = tmp_path / "out"
    procs = [cluster.start(rank, torchrun_command(rank, 29502, job_input, out), node_env()) for rank in (0, 1)]
    try:
        wait_for_parts(out, 3, procs[0])
        assert procs[1].poll() is None, "node 1 ended before it could be lost"
        cluster.power_off(1)
        (code0, err0), _ = finish(procs, timeout=90)
    finally:
        for proc in procs:  # whatever went wrong, no node keeps running
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert code0 != 0 and "[killed by the test" not in err0  # node 0 noticed and stopped by itself
    assert not (out / "prediction_results.txt").exists()
    committed = len(list((out / "work" / "parts").glob("part-*.npz")))
    resumed = finish([cluster.start(0, [sys.executable, "-m", "vnp.predict", str(job_input), "-o", str(out), *ARGS],
                                    node_env())])
    assert resumed[0][0] == 0, resumed
    assert tables(out) == tables(reference)
    record = json.loads((out / "run.json").read_text())
    assert record["world_size"] == 1 and record["resumed_units"] >= committed
