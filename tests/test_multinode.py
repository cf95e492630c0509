"""Several hosts: the socket interface vnp chooses, then two real "nodes" (network namespaces joined
by a veth pair) running one job through torchrun and through SLURM variables, and a node lost
mid-run then resumed on one node. The jobs run without GLOO_SOCKET_IFNAME: vnp must choose it."""

from __future__ import annotations

import pytest

from vnp.dist import Env, Network, look_at_network, pick_interface, set_socket_interface, spans_several_hosts

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
