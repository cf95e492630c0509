"""The one atomic writer (vnp.support.atomic): whole files or none, exclusive temporaries, the
umask, and what a full disk or a dead launcher leaves (issue 17, items 3, 8, 10, 11, 16)."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from vnp.support import atomic
from vnp.support.atomic import AtomicFiles, WriteFailed, write_text


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_a_file_is_written_whole_and_no_temporary_stays(tmp_path):
    write_text(tmp_path / "a.txt", "one")
    write_text(tmp_path / "a.txt", "two")
    assert (tmp_path / "a.txt").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_files_change_together_or_not_at_all(tmp_path):
    for name in ("a.tsv", "b.json"):
        (tmp_path / name).write_text("old")
    with pytest.raises(RuntimeError):
        with AtomicFiles() as files:
            files.write_text(tmp_path / "a.tsv", "new")
            assert files.current(tmp_path / "a.tsv").read_text() == "new"  # readable before the commit
            raise RuntimeError("the second file failed")
    assert [(tmp_path / n).read_text() for n in ("a.tsv", "b.json")] == ["old", "old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tsv", "b.json"]


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    (tmp_path / "a.tsv").write_text("old")

    with pytest.raises(WriteFailed, match=r"a.tsv: cannot write \(No space left on device\)$") as caught:
        with AtomicFiles() as files, files.open(tmp_path / "a.tsv") as fh:
            fh.write("half")
            raise OSError(errno.ENOSPC, "No space left on device")  # as the next write would
    assert caught.value.errno == errno.ENOSPC
    assert (tmp_path / "a.tsv").read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.tsv"]


def test_a_link_at_a_temporary_name_is_never_written_through(tmp_path, monkeypatch):
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / "t.tsv.vnp-0123456789ab.tmp").symlink_to(outside)
    (out / "u.tsv.tmp").symlink_to(outside)  # the name form earlier versions used
    draws = iter(["0123456789ab", *(f"{i:012x}" for i in range(1, 10))])
    monkeypatch.setattr(atomic.secrets, "token_hex", lambda n: next(draws))
    write_text(out / "t.tsv", "mine")
    write_text(out / "u.tsv", "mine")
    assert outside.read_text() == "precious" and (out / "t.tsv").read_text() == "mine"
    assert (out / "t.tsv.vnp-0123456789ab.tmp").is_symlink()  # not vnp's: left alone


def test_files_follow_the_umask(tmp_path, umask_022):
    write_text(tmp_path / "a.txt", "x")
    assert mode(tmp_path / "a.txt") == 0o644


def test_trained_and_converted_classifiers_follow_the_umask(tmp_path, umask_022):
    from vnp.models.classifier import MLPClassifier, save_classifier

    folder = save_classifier(MLPClassifier(8, 4, 2), tmp_path / "classifier")
    assert {p.name: mode(p) for p in folder.iterdir()} == {"classifier.safetensors": 0o644,
                                                            "classifier.json": 0o644}


def test_only_temporaries_of_vnp_s_name_form_are_leftovers(tmp_path):
    names = ["a.tsv.vnp-0123456789ab.tmp", "a.tsv.tmp", "notes.tmp", "a.tsv.vnp-xyz.tmp", "a.tsv"]
    for name in names:
        (tmp_path / name).write_text("x")
    atomic.remove_matching(tmp_path, atomic.is_temporary)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[1:])


def test_a_log_on_a_full_disk_prints_no_logging_dump(tmp_path, capsys):
    from vnp.run.folder import RunFolder
    from vnp.run.lifecycle import log, open_log

    open_log(RunFolder(tmp_path), 0)
    handler = log.handlers[0]

    class Full:
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self):
            pass

    handler.stream = Full()
    try:
        for _ in range(5):
            log.info("a record that cannot be written")
    finally:
        handler.stream = None
        log.handlers[:] = []
    assert capsys.readouterr().err == ""


def test_a_rank_whose_launcher_is_gone_stops_as_on_sigterm():
    from vnp.run.engine import StopFlag

    assert not StopFlag(parent=os.getppid()).requested  # the launcher is there
    assert not StopFlag(parent=None).requested  # not watched (no torchrun agent)
    orphan = StopFlag(parent=os.getppid() + 1_000_000)  # a parent that is no longer ours
    assert orphan.requested and "launcher" in orphan.reason
