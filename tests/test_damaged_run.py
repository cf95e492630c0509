"""A damaged or unwritable run folder (issue 17, items 2, 3, 8, 10, 15): vnp call and a resume
check the packed inputs against their index; vnp call reads and checks everything before it
writes, then replaces every file together or none; one line, never a traceback, no temporary left."""

from __future__ import annotations

import errno
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import one_error_line, tables, write_mixed_input
from vnp.call import main as call_main
from vnp.predict import main as predict_main

COMMON = ["pack=tiny", "progress=false", "threads=1", "batch.unit_chunks=2"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("finished")
    fasta = write_mixed_input(root / "mixed.fa")
    out = root / "out"
    assert predict_main([str(fasta), "-o", str(out), *COMMON]) == 0
    return out


@pytest.fixture
def out(finished, tmp_path) -> Path:
    copy = tmp_path / "out"
    shutil.copytree(finished, copy, symlinks=True)
    return copy


def snapshot(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def one_line(capsys) -> str:
    return one_error_line(capsys.readouterr().err)


def refused_unchanged(out: Path, capsys, *args) -> str:
    before = snapshot(out)
    assert call_main([str(out), *args]) == 2
    line = one_line(capsys)
    assert snapshot(out) == before
    return line


@pytest.mark.parametrize("damage", ["cut", "changed", "missing"])
def test_call_refuses_damaged_packed_sequences(out, capsys, damage):
    packed = out / "work" / "sequences.bin"
    data = packed.read_bytes()
    if damage == "cut":
        packed.write_bytes(data[: len(data) // 2])
    elif damage == "changed":
        packed.write_bytes(data[:10] + (b"A" if data[10:11] != b"A" else b"C") + data[11:])
    else:
        packed.unlink()
    line = refused_unchanged(out, capsys, "call.min_score=0.9")
    expected = {"cut": f"{len(data) // 2} bytes where the index says {len(data)} (cut or changed)",
                "changed": "its content differs from the checksum recorded when it was packed",
                "missing": "missing"}[damage]
    assert line.startswith(f"vnp: error: {packed}: {expected}; the run's packed inputs are damaged")


def test_a_resume_repacks_damaged_sequences_from_unchanged_inputs(out, finished, capsys):
    packed = out / "work" / "sequences.bin"
    original = packed.read_bytes()
    packed.write_bytes(original[:100])  # a partial copy of OUT
    for name in tables(out):
        (out / name).unlink()
    fasta = finished.parent / "mixed.fa"
    assert predict_main([str(fasta), "-o", str(out), *COMMON]) == 0
    assert tables(out) == tables(finished) and packed.read_bytes() == original
    assert "repacking the inputs" in (out / "logs" / "rank0.log").read_text()


@pytest.mark.parametrize("text, problem", [("{bad", "damaged (not valid JSON)"), ("[]", "damaged (not a JSON object)"),
                                           (b"\xff\xfe", "damaged (not valid JSON)")])
def test_call_with_a_damaged_run_json_changes_nothing(out, capsys, text, problem):
    (out / "run.json").write_bytes(text if isinstance(text, bytes) else text.encode())
    line = refused_unchanged(out, capsys, "call.min_score=0.9")
    assert line == f"vnp: error: {out / 'run.json'}: {problem}"


def test_call_with_a_damaged_run_record_changes_nothing(out, capsys):
    (out / "work" / "record.json").write_text('{"chunk_length": "x"}')
    line = refused_unchanged(out, capsys, "call.min_score=0.9")
    assert line == f"vnp: error: {out / 'work' / 'record.json'}: not a vnp run record (keys missing or mistyped)"


def test_a_full_disk_while_writing_the_report_leaves_the_old_results(out, capsys, monkeypatch):
    from vnp.support.atomic import AtomicFiles

    original = AtomicFiles.write_text

    def full_at_report(self, path, text):
        if Path(path).name != "report.html":
            return original(self, path, text)
        with self.open(path) as fh:
            fh.write(text[:100])
            raise OSError(errno.ENOSPC, "No space left on device")  # as the next write would

    monkeypatch.setattr(AtomicFiles, "write_text", full_at_report)
    line = refused_unchanged(out, capsys, "call.min_score=0.9")
    assert line == f"vnp: error: {out / 'report.html'}: cannot write (No space left on device)"
    assert not list(out.rglob("*.tmp"))


def test_call_never_writes_through_a_link_at_a_temporary_name(out, tmp_path, capsys):
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    (out / "contigs.tsv.tmp").symlink_to(outside)  # the temporary name earlier versions used
    assert call_main([str(out), "call.min_score=0.9"]) == 0
    assert outside.read_text() == "precious"


@pytest.fixture
def tmpfs(tmp_path):
    """A tiny tmpfs (needs root and mount rights; skipped elsewhere)."""
    mount = tmp_path / "mnt"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.mark.parametrize("trouble", ["read-only", "full"])
def test_call_and_report_on_a_read_only_or_full_disk(finished, tmpfs, capsys, trouble):
    from vnp.report import main as report_main

    out = tmpfs / "out"
    shutil.copytree(finished, out, symlinks=True, ignore=shutil.ignore_patterns("tiny_pack"))
    before = snapshot(out)
    if trouble == "read-only":
        subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    else:
        with open(tmpfs / "filler", "wb", buffering=0) as fh:
            try:
                while fh.write(b"\0" * 4096):
                    pass
            except OSError:
                pass
    assert call_main([str(out), "call.min_score=0.9"]) == 2
    call_line = one_line(capsys)
    assert report_main([str(out)]) == 2
    report_line = one_line(capsys)
    assert snapshot(out) == before
    if trouble == "read-only":
        assert call_line.endswith("(Read-only file system)") and report_line.endswith("(Read-only file system)")
    else:
        assert "No space left on device" in call_line and "No space left on device" in report_line


def test_a_failed_forced_rerun_leaves_no_handshake_files(out, finished, tmp_path, capsys):
    broken = tmp_path / "broken"
    tiny = out / "work" / "tiny_pack"
    broken.mkdir()
    (broken / "pack.yaml").write_text((tiny / "pack.yaml").read_text())
    for name in ("dnabert", "classifier"):
        (broken / name).symlink_to(tiny / name)
    (broken / "esm2_tiny.pt").write_bytes((tiny / "esm2_tiny.pt").read_bytes()[:5000])  # fails as it loads
    fasta = finished.parent / "mixed.fa"
    assert predict_main([str(fasta), "-o", str(out), *COMMON, f"pack={broken}", "force=true"]) == 2
    assert "esm2_tiny.pt" in one_line(capsys)
    left = sorted(p.name for p in (out / "work").iterdir() if p.name.startswith(("ready-", "remaining-", "heartbeat-")))
    assert left == []


def test_the_report_says_when_a_later_run_replaced_the_progress(out, finished, monkeypatch):
    import vnp.predict
    from vnp.results.report import write_report

    def killed(ctx, state, config, models, stop):  # the forced rerun started, then was stopped
        stop.requested = True

    monkeypatch.setattr(vnp.predict, "run_steps", killed)
    fasta = finished.parent / "mixed.fa"
    assert predict_main([str(fasta), "-o", str(out), *COMMON, "force=true"]) == 143
    page = write_report(out).read_text()
    assert f"{out} now holds an unfinished run, started after the one shown here" in page
    finished_page = write_report(finished).read_text()
    assert "now holds an unfinished run" not in finished_page
