"""Packing the inputs into OUT/work: long records are streamed in pieces, the disk's free space is
checked before and while writing, and leftover temporaries are removed at the next start."""

from __future__ import annotations

import re
import shutil

import pytest

from vnp.support.errors import InputError


def test_a_long_record_is_packed_in_pieces(tmp_path, monkeypatch):
    """Memory: the packer never sees more than a block of a record at a time."""
    from vnp.run import plan
    from vnp.seq import seqio

    monkeypatch.setattr(seqio, "_blocks", lambda path, original=seqio._blocks: original(path, size=1000))
    path = tmp_path / "long.fa"
    path.write_bytes(b">long\n" + b"ACGTACGTAC\n" * 10_000 + b">short\nAC\n")
    sizes = [len(piece) for piece in seqio.iter_pieces(path) if isinstance(piece, bytes)]
    assert max(sizes) <= 1000 and sum(sizes) == 100_002
    work = tmp_path / "work"
    plan.pack_inputs([path], work)
    loaded = plan.load_plan(work, 500)
    assert loaded.lengths.tolist() == [100_000, 2]
    assert (work / "sequences.bin").read_bytes() == b"ACGTACGTAC" * 10_000 + b"AC"


def test_a_long_record_is_packed_without_holding_it(tmp_path, monkeypatch):
    import tracemalloc

    from vnp.run import plan
    from vnp.seq import seqio

    monkeypatch.setattr(seqio, "_blocks", lambda path, original=seqio._blocks: original(path, size=1 << 20))
    path = tmp_path / "long.fa"
    path.write_bytes(b">long\n" + (b"ACGTACGTAC" * 6 + b"\n") * 300_000)  # 18 Mbp
    tracemalloc.start()
    try:
        plan.pack_inputs([path], tmp_path / "work")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert plan.load_plan(tmp_path / "work", 500).lengths.tolist() == [18_000_000]
    assert peak < 8 << 20, peak  # a few blocks, not the 18 MB record (joined, decoded, encoded)


def free_space(monkeypatch, free: list[int]):
    """shutil.disk_usage as seen by the packer: the next value of `free` at each call."""
    from vnp.run import plan

    usage = shutil.disk_usage("/")
    values = iter(free)
    monkeypatch.setattr(plan.shutil, "disk_usage", lambda path: usage._replace(free=next(values, free[-1])))


def test_packing_refuses_a_folder_without_space_for_the_inputs(tmp_path, monkeypatch):
    from vnp.run.plan import pack_inputs

    fasta = tmp_path / "in.fa"
    fasta.write_bytes(b">s\n" + b"ACGT" * 1000 + b"\n")
    free_space(monkeypatch, [(64 << 20) + 100])
    work = tmp_path / "work"
    with pytest.raises(InputError, match=f"^{re.escape(str(work))}: packing the inputs needs at least 65 MiB free, "
                                         "64 MiB are left; free space there or choose another output folder"):
        pack_inputs([fasta], work)
    assert not list(work.iterdir())


def test_packing_stops_before_the_disk_is_full(tmp_path, monkeypatch):
    from vnp.run import plan

    monkeypatch.setattr(plan, "SPACE_CHECK_EVERY", 1000)
    fasta = tmp_path / "in.fa"
    fasta.write_bytes(b">s\n" + b"ACGT" * 1000 + b"\n>t\n" + b"ACGT" * 1000 + b"\n")
    free_space(monkeypatch, [1 << 30, 1 << 30, 1 << 20])
    monkeypatch.setattr(plan, "iter_pieces", lambda path, original=plan.iter_pieces: (
        piece for p in original(path) for piece in ([p[:1000], p[1000:]] if isinstance(p, bytes) else [p])))
    work = tmp_path / "work"
    with pytest.raises(InputError, match=r"work: only 1 MiB are left after packing 0 MiB of the inputs \(at least 64"):
        plan.pack_inputs([fasta], work)
    assert not list(work.iterdir())  # no temporary file left behind


def test_a_full_disk_while_packing_is_one_line(tmp_path, monkeypatch):
    import errno

    from vnp.run import plan

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(plan, "_pack", full)
    with pytest.raises(InputError, match="work: the disk is full while packing the inputs; free space there"):
        plan.pack_inputs([], tmp_path / "work")


def test_leftover_temporary_files_are_removed_at_the_next_start(tmp_path):
    from vnp.run.folder import RunFolder

    out = tmp_path / "out"
    (out / "work" / "parts").mkdir(parents=True)
    leftovers = [out / "work" / "sequences.bin.vnp-0123456789ab.tmp", out / "work" / "ids.txt.vnp-ba9876543210.tmp",
                 out / "chunks.tsv.vnp-00000000000f.tmp"]
    for path in leftovers:
        path.write_bytes(b"x" * 1000)
    (out / "work" / "sequences.bin").write_bytes(b"ACGT")
    RunFolder(out).remove_leftovers()
    assert not any(path.exists() for path in leftovers) and (out / "work" / "sequences.bin").exists()
