"""Reliability defects from a hostile-input review (issue 8): models identified by content, paths
checked before they are opened, one line instead of a traceback, no silent wrong output."""

from __future__ import annotations

import json
import re
import shutil
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import ROOT, child_env, rank_pid, slurm_job_id, tables, write_long_input
from vnp.support.errors import InputError
from vnp.models import identity
from vnp.models.classifier import MLPClassifier, load_classifier, save_classifier
from vnp.models.pack import build_tiny_pack, load_pack, model_digests

TINY_DIM = 48 + 64  # the tiny pack's DNABERT-S + ESM2 widths


@pytest.fixture(scope="module")
def tiny_pack(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pack") / "tiny"
    build_tiny_pack(folder)
    return folder


@pytest.fixture(autouse=True)
def private_digest_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def wide_classifiers(folder: Path) -> tuple[Path, Path]:
    """Two classifiers with a 4096-wide hidden layer (a 1.8 MB file) that differ only in the output
    bias, stored after the first MiB: the same size and the same first MiB."""
    torch.manual_seed(0)
    model = MLPClassifier(TINY_DIM, 4096, 2).eval()
    a = save_classifier(model, folder / "a")
    with torch.no_grad():
        model.output_layer.bias += 1.0
    b = save_classifier(model, folder / "b")
    bytes_a = (a / "classifier.safetensors").read_bytes()
    bytes_b = (b / "classifier.safetensors").read_bytes()
    assert len(bytes_a) == len(bytes_b) > 1 << 20 and bytes_a[: 1 << 20] == bytes_b[: 1 << 20] != bytes_b
    return a, b


def copy_folder(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        (target / path.name).write_bytes(path.read_bytes())


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("vnp: error")]


# ---------------------------------------------------------------- 1. models identified by content


@pytest.mark.slow
def test_resume_with_a_classifier_changed_beyond_its_first_mib_is_refused(tiny_pack, tmp_path):
    """The issue's scenario: SIGTERM a run using classifier `live` = A, copy B over `live`, rerun."""
    a, b = wide_classifiers(tmp_path)
    live = tmp_path / "live"
    copy_folder(a, live)
    fasta = tmp_path / "in.fa"
    fasta.write_text("".join(f">s{i}\n" + "ATGGCCAAAGGCTTC" * 60 + "\n" for i in range(40)))
    out = tmp_path / "out"
    args = [sys.executable, "-m", "vnp.predict", str(fasta), "-o", str(out), f"pack={tiny_pack}",
            f"classifier={live}", "progress=false", "threads=1", "batch.unit_chunks=2",
            "engine.commit_every_steps=1"]  # a part early, so the signal lands mid-run
    proc = subprocess.Popen(args, env=child_env(), cwd=ROOT, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list((out / "work" / "parts").glob("part-*.npz")):
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143, proc.stderr.read()
    proc.stderr.close()
    copy_folder(b, live)
    rerun = subprocess.run(args, env=child_env(), cwd=ROOT, capture_output=True, text=True, timeout=120)
    digests = [model_digests(load_pack(str(tiny_pack), str(folder)))["classifier"] for folder in (a, b)]
    assert rerun.returncode == 2, rerun.stderr
    assert error_lines(rerun.stderr) == [rerun.stderr.strip()]
    line = rerun.stderr.strip()
    assert f"classifier model {live}" in line and digests[0] in line and digests[1] in line
    assert "force=true" in line
    assert not (out / "prediction_results.txt").exists()


def test_every_byte_of_a_model_names_it(tiny_pack, tmp_path):
    pack = load_pack(str(tiny_pack))
    before = model_digests(pack)
    assert all(value.startswith("sha256:") and len(value) == 71 for value in before.values())
    esm = Path(pack.esm)
    data = bytearray(esm.read_bytes())
    data[-100] ^= 1
    copy = tmp_path / "esm2_tiny.pt"
    copy.write_bytes(bytes(data))
    pack.esm = str(copy)
    after = model_digests(pack)
    assert after["esm"] != before["esm"] and after["dnabert"] == before["dnabert"]


def test_large_file_digests_are_cached_by_path_size_mtime_and_inode(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(identity, "CACHE_MIN_BYTES", 10)
    model = tmp_path / "model.pt"
    model.write_bytes(b"x" * 1000)
    first = identity.file_digest(model)
    entries = list(identity.cache_dir().glob("*.json"))
    assert len(entries) == 1 and first in entries[0].read_text()
    calls = []
    monkeypatch.setattr(identity, "_sha256", lambda path, what: calls.append(path) or "hashed")
    assert identity.file_digest(model) == first and not calls  # unchanged: from the cache
    model.write_bytes(b"y" * 1000)  # same size, same inode, a new mtime
    os.utime(model, ns=(1, 1))
    assert identity.file_digest(model) == "hashed" and len(calls) == 1
    replacement = tmp_path / "other.pt"
    replacement.write_bytes(b"x" * 1000)
    os.utime(replacement, ns=(1, 1))
    os.replace(replacement, model)  # same size and mtime, another inode
    assert identity.file_digest(model) == "hashed" and len(calls) == 2


def test_slow_hashing_is_said_in_the_log(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(identity, "SLOW_HASH_S", -1.0)
    model = tmp_path / "model.pt"
    model.write_bytes(b"x" * 100)
    with caplog.at_level("INFO", logger="vnp"):
        identity.file_digest(model)
    assert any("hashed" in r.getMessage() and str(model) in r.getMessage() for r in caplog.records)


def test_a_hub_snapshot_is_named_by_its_commit(tiny_pack, tmp_path, monkeypatch):
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = tmp_path / "hub" / "models--org--dnabert" / "snapshots" / commit
    copy_folder(tiny_pack / "dnabert", snapshot)
    import vnp.models.dnabert as dnabert

    monkeypatch.setattr(dnabert, "download_snapshot", lambda repo_id: snapshot)
    pack = load_pack(str(tiny_pack))
    pack.dnabert = "org/dnabert"
    assert model_digests(pack)["dnabert"] == f"git:{commit}"


# ---------------------------------------------------------------- 2. paths checked before opening


@pytest.fixture
def no_hang():
    """A test that would block forever on a read fails after 20 s instead."""
    def expired(signum, frame):
        raise TimeoutError("blocked on a read")
    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def test_a_fifo_as_a_model_file_is_refused_not_read(tiny_pack, tmp_path, no_hang):
    from vnp.models.esm import load_esm

    pack = load_pack(str(tiny_pack))
    pack.esm = str(fifo(tmp_path / "esm.pt"))
    with pytest.raises(InputError, match=r"esm.pt: ESM checkpoint is a FIFO \(named pipe\), not a regular file"):
        model_digests(pack)
    with pytest.raises(InputError, match="is a FIFO"):
        load_esm(pack.esm)
    folder = tmp_path / "classifier"
    folder.mkdir()
    fifo(folder / "classifier.safetensors")
    (folder / "classifier.json").write_text("{}")
    with pytest.raises(InputError, match="classifier.safetensors: classifier file is a FIFO"):
        load_classifier(folder)
    with pytest.raises(InputError, match="classifier checkpoint is a FIFO"):
        load_classifier(fifo(tmp_path / "model.pth"))


def test_a_fifo_in_a_model_folder_is_refused(tiny_pack, tmp_path, no_hang):
    dnabert = tmp_path / "dnabert"
    copy_folder(tiny_pack / "dnabert", dnabert)
    (dnabert / "config.json").unlink()
    fifo(dnabert / "config.json")
    pack = load_pack(str(tiny_pack))
    pack.dnabert = str(dnabert)
    with pytest.raises(InputError, match="config.json: DNABERT model file is a FIFO"):
        model_digests(pack)


@pytest.mark.parametrize("folder", ["/usr", "/proc/self"])
def test_a_system_folder_as_a_model_is_refused_quickly(tiny_pack, folder, no_hang):
    if not Path(folder).is_dir():
        pytest.skip(f"no {folder} here")
    for role in ("dnabert", "classifier"):
        pack = load_pack(str(tiny_pack))
        setattr(pack, role, folder)
        with pytest.raises(InputError, match=f"^{folder}"):
            model_digests(pack)


def test_a_pipe_or_device_as_input_or_config_is_not_a_regular_file(tmp_path, no_hang):
    from vnp.support.config import load_config
    from vnp.run.plan import check_inputs

    pipe = fifo(tmp_path / "reads.fa")
    with pytest.raises(InputError, match=r"reads.fa: is a FIFO \(named pipe\), not a regular file; save the input"):
        check_inputs([str(pipe)])
    with pytest.raises(InputError, match="/dev/null: is a device, not a regular file"):
        check_inputs(["/dev/null"])
    with pytest.raises(InputError, match="reads.fa: config file is a FIFO"):
        load_config(str(pipe), [])


@pytest.mark.slow
def test_a_fifo_in_a_pack_ends_the_run_with_one_line(tiny_pack, tmp_path):
    pack = tmp_path / "pack"
    pack.mkdir()
    (pack / "pack.yaml").write_text((tiny_pack / "pack.yaml").read_text())
    for name in ("dnabert", "classifier"):
        (pack / name).symlink_to(tiny_pack / name)
    fifo(pack / "esm2_tiny.pt")
    fasta = tmp_path / "in.fa"
    fasta.write_text(">s1\n" + "ATGGCC" * 50 + "\n")
    proc = subprocess.run([sys.executable, "-m", "vnp.predict", str(fasta), "-o", str(tmp_path / "out"),
                           f"pack={pack}", "progress=false", "threads=1"],
                          env=child_env(), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and error_lines(proc.stderr) == [proc.stderr.strip()], proc.stderr
    assert "esm2_tiny.pt: ESM checkpoint is a FIFO" in proc.stderr


# ---------------------------------------------------------------- 5. one line, never a traceback


@pytest.mark.parametrize("environ, expected", [
    ({"RANK": "abc", "WORLD_SIZE": "2"}, "launcher variable RANK='abc': not an integer"),
    ({"RANK": "1", "WORLD_SIZE": "1"}, "RANK=1 must be below WORLD_SIZE=1"),
    ({"RANK": "0"}, "RANK is set without WORLD_SIZE"),
    ({"RANK": "0", "WORLD_SIZE": "0"}, "WORLD_SIZE=0: must be at least 1"),
    ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "x"}, "LOCAL_RANK='x': not an integer"),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "abc"}, "SLURM_NTASKS='abc': not an integer"),
    ({"SLURM_PROCID": "1"}, "SLURM_PROCID is set without SLURM_NTASKS"),
    ({"SLURM_PROCID": "2", "SLURM_NTASKS": "2"}, "SLURM_PROCID=2 must be below SLURM_NTASKS=2"),
])
def test_bad_launcher_variables_are_named(environ, expected):
    from vnp.run.dist import detect_env

    with pytest.raises(InputError, match=expected.replace("(", r"\(")):
        detect_env(environ)


def test_good_launcher_variables_still_work():
    from vnp.run.dist import detect_env

    assert detect_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}).rank == 1
    assert detect_env({"SLURM_PROCID": "0"}).launcher == "single"  # a batch step's own shell
    assert detect_env({"SLURM_NTASKS": "4"}).launcher == "single"  # an salloc shell
    assert detect_env({"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_TASKS_PER_NODE": "2"}).world_size == 2


@pytest.mark.slow
@pytest.mark.parametrize("environ", [{"RANK": "abc", "WORLD_SIZE": "2"}, {"SLURM_PROCID": "1"}])
def test_bad_launcher_variables_give_one_line_from_the_command(environ, tmp_path):
    fasta = tmp_path / "in.fa"
    fasta.write_text(">s1\nACGT\n")
    proc = subprocess.run([sys.executable, "-m", "vnp.predict", str(fasta), "-o", str(tmp_path / "out"), "pack=tiny"],
                          env={**child_env(), **environ}, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and error_lines(proc.stderr) == [proc.stderr.strip()], proc.stderr


@pytest.mark.parametrize("command", ["embed", "train"])
def test_bad_launcher_variables_give_one_line_from_vnp_embed_and_train(tmp_path, command):
    fasta = tmp_path / "in.fa"
    fasta.write_text(">s1\nACGT\n")
    (tmp_path / "m.tsv").write_text(f"{fasta}\tvirus\n")
    args = {"embed": ["dnabert", str(fasta), "-m", "x", "-o", str(tmp_path / "e.npz")],
            "train": [str(tmp_path / "m.tsv"), "-o", str(tmp_path / "trained")]}[command]
    proc = subprocess.run([sys.executable, "-m", f"vnp.{command}", *args], env={**child_env(), "RANK": "abc",
                          "WORLD_SIZE": "2"}, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == "vnp: error: launcher variable RANK='abc': not an integer"


def test_more_threads_than_cores_is_refused_where_the_rank_runs():
    """A config may come from a bigger machine (`vnp call`, `vnp report` read it anywhere): the
    rank's own cores bound `threads` only when it runs."""
    from vnp.support.config import load_config, usable_cores
    from vnp.run.dist import Env, set_cpu_threads

    config = load_config(None, [f"threads={usable_cores() + 1}"])  # valid as a setting
    with pytest.raises(InputError, match=f"threads={usable_cores() + 1}: this rank may use only"):
        set_cpu_threads(config.threads, Env(0, 0, 1, 1, "single"))


@pytest.mark.parametrize("override, expected", [
    ("threads=100000", "threads must be 0 (automatic) or 1.."),
    ("threads=-1", "threads must be 0"),
    ("dist.timeout_s=inf", "dist.timeout_s must be a positive number of seconds, got inf"),
    ("dist.timeout_s=nan", "dist.timeout_s must be a positive number of seconds, got nan"),
    ("chunk_length=2", "chunk_length must be at least 3 (one codon)"),
    ("chunk_length=-5", "chunk_length must be at least 3"),
])
def test_bad_settings_are_refused(override, expected):
    from vnp.support.config import load_config

    with pytest.raises(InputError, match=re.escape(expected)):
        load_config(None, [override])


YAML_HAZARDS = {
    "syntax": ("a: [\n", "line 2: invalid YAML"),
    "list": ("- 1\n- 2\n", "must be a mapping of keys, not a list"),
    "python_tag": ("threads: !!python/object/apply:os.system ['touch PWNED']\n", "could not determine a constructor"),
    "duplicate": ("threads: 1\nthreads: 2\n", "found duplicate key threads"),
    "alias_bomb": ("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                   "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n",
                   "line 2: YAML aliases (*name) are not allowed"),
    "binary": (b"\xff\xfe\x00junk", "is not UTF-8 text"),
}


@pytest.mark.parametrize("case", sorted(YAML_HAZARDS))
def test_yaml_hazards_in_a_config_or_pack_file(case, tmp_path, no_hang):
    from vnp.support.config import load_config

    text, expected = YAML_HAZARDS[case]
    path = tmp_path / "x.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(InputError, match=f"^{re.escape(str(path))}: .*{re.escape(expected)}"):
        load_config(str(path), [])
    with pytest.raises(InputError, match=f"^{re.escape(str(path))}: .*{re.escape(expected)}"):
        load_pack(str(path), classifier="c")
    assert not (ROOT / "PWNED").exists()


@pytest.mark.parametrize("key, value, expected", [
    ("chunk_length", "abc", "key 'chunk_length': Value 'abc' of type 'str' could not be converted to Integer"),
    ("dnabert_dim", "abc", "key 'dnabert_dim': Value 'abc'"),
    ("chunk_length", "0", "chunk_length must be at least 3 (one codon), got 0"),
    ("chunk_length", "-500", "chunk_length must be at least 3"),
    ("chunk_length", "2", "chunk_length must be at least 3"),
    ("esm_dim", "0", "esm_dim must be positive"),
    ("esm_layer", "-1", "esm_layer must be >= 0"),
])
def test_every_pack_field_is_type_checked(tiny_pack, tmp_path, key, value, expected):
    lines = [f"{key}: {value}" if line.startswith(key + ":") else line
             for line in (tiny_pack / "pack.yaml").read_text().splitlines()]
    (tmp_path / "pack.yaml").write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=re.escape(expected)):
        load_pack(str(tmp_path / "pack.yaml"))


@pytest.mark.parametrize("config, expected", [
    ('{"input_dim": Infinity, "hidden_dim": 16, "num_class": 2}', "Infinity is not valid JSON"),
    ('{"input_dim": 112, "hidden_dim": 1e400, "num_class": 2}', "hidden_dim must be a positive integer"),
    ('{"input_dim": 112, "hidden_dim": -16, "num_class": 2}', "hidden_dim must be a positive integer, got -16"),
    ('{"input_dim": 112, "hidden_dim": 16}', "missing key 'num_class'"),
    ('[1, 2]', "expected a JSON object"),
])
def test_a_bad_classifier_json_is_one_line(tiny_pack, tmp_path, config, expected):
    folder = tmp_path / "classifier"
    copy_folder(tiny_pack / "classifier", folder)
    (folder / "classifier.json").write_text(config)
    with pytest.raises(InputError, match=re.escape(expected)):
        load_classifier(folder)


@pytest.mark.parametrize("content", [b"hello, this is a text file\n" * 5, b"\x80\x02]q\x00(K\x01e.", b"x"])
def test_a_text_or_garbage_file_as_classifier_is_one_line(tmp_path, content):
    path = tmp_path / "model.pth"
    path.write_bytes(content)
    with pytest.raises(InputError, match="model.pth: (not a readable classifier checkpoint|expected a pickled)"):
        load_classifier(path)


# ---------------------------------------------------------------- 7. memory bombs in model files


def test_a_classifier_of_stride_0_views_is_refused_before_allocating(tmp_path):
    """A few kB whose tensors claim a 4M-wide (or 10^12-wide) hidden layer."""
    for hidden in (4_000_000, 10**12):
        state = {"hidden_layer.weight": torch.zeros(1).expand(hidden, TINY_DIM),
                 "hidden_layer.bias": torch.zeros(1).expand(hidden),
                 "bn1.weight": torch.zeros(1).expand(hidden), "bn1.bias": torch.zeros(1).expand(hidden),
                 "bn1.running_mean": torch.zeros(1).expand(hidden), "bn1.running_var": torch.zeros(1).expand(hidden),
                 "bn1.num_batches_tracked": torch.tensor(0),
                 "output_layer.weight": torch.zeros(1).expand(2, hidden), "output_layer.bias": torch.zeros(2)}
        path = tmp_path / f"bomb{hidden}.pth"
        torch.save(state, path)
        assert path.stat().st_size < 10_000
        with pytest.raises(InputError, match=r"bomb\d+.pth: hidden_layer.weight claims shape .* more than the file"):
            load_classifier(path, input_dim=TINY_DIM)


def test_a_classifier_of_another_width_is_refused_before_allocating(tmp_path):
    path = tmp_path / "wide.pth"
    torch.save(MLPClassifier(TINY_DIM + 1, 8, 2).state_dict(), path)
    with pytest.raises(InputError, match=f"classifier expects {TINY_DIM + 1} features, not {TINY_DIM}"):
        load_classifier(path, input_dim=TINY_DIM)


# ---------------------------------------------------------------- 8. distributed edge cases


def test_gpus_without_cuda_is_refused(tmp_path, capsys):
    from vnp.predict import main as predict_main

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    fasta = tmp_path / "in.fa"
    fasta.write_text(">s1\nACGT\n")
    assert predict_main(["--gpus", "0,1", str(fasta), "-o", str(tmp_path / "out"), "pack=tiny"]) == 2
    assert capsys.readouterr().err == "vnp: error: --gpus 0,1: CUDA is not available on this machine " \
                                      "(device=cpu runs that many CPU ranks)\n"
    assert not (tmp_path / "out").exists()


def test_out_logs_a_file_or_lock_a_folder_is_one_line(tmp_path):
    from vnp.run import state as run_state
    from vnp.run.folder import RunFolder

    out = tmp_path / "out"
    (out / "work").mkdir(parents=True)
    (out / "logs").write_text("not a folder")
    with pytest.raises(InputError, match=r"out/logs: exists and is not a folder \(the per-rank logs go there\)"):
        run_state.open_log(out, 0)
    (out / "work" / ".lock").mkdir()
    with pytest.raises(InputError, match=r"work/.lock: cannot open the lock file \(Is a directory\)"):
        RunFolder(out).lock()


FAILING_PACKING = """
import sys
import vnp.run.state as run_state

def failing(paths, work):
    raise OSError(28, "No space left on device")

run_state.pack_inputs = failing
from vnp.predict import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_an_unexpected_error_while_preparing_names_a_log_that_exists(tiny_pack, tmp_path):
    script = tmp_path / "failing.py"
    script.write_text(FAILING_PACKING)
    fasta = tmp_path / "in.fa"
    fasta.write_text(">s1\nACGTACGT\n")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(script), str(fasta), "-o", str(out), f"pack={tiny_pack}",
                           "progress=false"], env=child_env(), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and error_lines(proc.stderr) == [proc.stderr.strip()], proc.stderr
    log = re.search(r"\(log: (.*)\)$", proc.stderr.strip()).group(1)
    assert "No space left on device" in proc.stderr and "Traceback" in Path(log).read_text()


# ---------------------------------------------------------------- 6. no silent wrong output


def records_of(tmp_path: Path, data: bytes, name: str = "in.fa") -> list[tuple[str, str]]:
    from vnp.seq.seqio import iter_records

    path = tmp_path / name
    path.write_bytes(data)
    return [(r.id, r.seq) for r in iter_records(path)]


@pytest.mark.parametrize("newline", [b"\r", b"\r\n", b"\n"])
def test_every_line_end_reads_the_same(tmp_path, newline):
    fasta = b">c1 first\nACGT\nAC\n>c2\nGGTT\n".replace(b"\n", newline)
    assert records_of(tmp_path, fasta) == [("c1", "ACGTAC"), ("c2", "GGTT")]
    fastq = b"@r1\nACGT\n+\nIIII\n@r2\nGG\n+\nII\n".replace(b"\n", newline)
    assert records_of(tmp_path, fastq, "in.fq") == [("r1", "ACGT"), ("r2", "GG")]


def test_a_cr_lf_split_between_two_blocks_is_one_line_end(tmp_path, monkeypatch):
    from vnp.seq import seqio

    original = seqio._blocks
    monkeypatch.setattr(seqio, "_blocks", lambda path: original(path, size=5))  # ">c1\r" | "\nACG" ...
    fastq = b"@r1\r\nACGT\r\n+\r\nIIII\r\n@r2\r\nGG\r\n+\r\nII\r\n"
    assert records_of(tmp_path, fastq, "in.fq") == [("r1", "ACGT"), ("r2", "GG")]


def test_utf8_headers_are_accepted_anywhere_and_a_bom_is_skipped(tmp_path):
    early = ">α1 día\nACGT\n>s2\nGG\n".encode()
    late = (">s0\n" + "A" * 5000 + "\n>α1 día\nACGT\n").encode()
    assert records_of(tmp_path, b"\xef\xbb\xbf" + early) == [("α1", "ACGT"), ("s2", "GG")]
    assert records_of(tmp_path, late)[1] == ("α1", "ACGT")
    with pytest.raises(InputError, match="line 1: binary data, not a FASTA/FASTQ file"):
        records_of(tmp_path, b">s\xff\xfe1\nACGT\n")
    with pytest.raises(InputError, match=r"line 3: binary data in a header \(not UTF-8 at column 3\)"):
        records_of(tmp_path, b">s0\n" + b"A" * 5000 + b"\n>s\xff1\nACGT\n")


@pytest.mark.parametrize("rid", ["evil\x1b[31mred", "bell\x07", "csi\u009b31m", "zw\u200bsp"])
def test_control_characters_in_an_id_are_refused(tmp_path, rid):
    with pytest.raises(InputError, match=r"line 1: record ID contains the control character U\+"):
        records_of(tmp_path, f">{rid}\nACGT\n".encode())


@pytest.mark.slow
def test_cr_only_fasta_and_utf8_ids_give_the_right_tables(tiny_pack, tmp_path):
    fasta = tmp_path / "mac.fa"
    fasta.write_bytes(b"\xef\xbb\xbf>c\xc3\xa91\r" + b"ATGGCCAAAGGC" * 20 + b"\r>c2\r" + b"ACGT" * 40 + b"\r")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "vnp.predict", str(fasta), "-o", str(out), f"pack={tiny_pack}",
                           "progress=false", "threads=1"], env={**child_env(), "LC_ALL": "C", "LANG": "C"},
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    contigs = (out / "contigs.tsv").read_text(encoding="utf-8").splitlines()
    rows = [dict(zip(contigs[0].split("\t"), line.split("\t"))) for line in contigs[1:]]
    assert [(row["sequence_id"], row["length"]) for row in rows] == [("cé1", "240"), ("c2", "160")]


# ---------------------------------------------------------------- 4. force=true keeps results until the run starts


@pytest.mark.slow
def test_force_with_a_corrupt_model_keeps_the_finished_results(tiny_pack, tmp_path):
    fasta = tmp_path / "in.fa"
    fasta.write_text("".join(f">s{i}\n" + "ATGGCCAAAGGCTTC" * 20 + "\n" for i in range(4)))
    out = tmp_path / "out"
    args = [sys.executable, "-m", "vnp.predict", str(fasta), "-o", str(out), "progress=false", "threads=1"]
    first = subprocess.run([*args, f"pack={tiny_pack}"], env=child_env(), cwd=ROOT, capture_output=True, text=True,
                           timeout=120)
    assert first.returncode == 0, first.stderr
    kept = {name: (out / name).read_bytes() for name in ("run.json", "config.yaml")} | tables(out)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "pack.yaml").write_text((tiny_pack / "pack.yaml").read_text())
    for name in ("dnabert", "classifier"):
        (broken / name).symlink_to(tiny_pack / name)
    (broken / "esm2_tiny.pt").write_bytes((tiny_pack / "esm2_tiny.pt").read_bytes()[:5000])  # loads on every rank
    proc = subprocess.run([*args, f"pack={broken}", "force=true"], env=child_env(), cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "esm2_tiny.pt" in proc.stderr, proc.stderr
    assert kept == {name: (out / name).read_bytes() for name in ("run.json", "config.yaml")} | tables(out)
    assert list((out / "work" / "parts").glob("part-*.npz"))  # the finished run's progress too


# ---------------------------------------------------------------- 3. records streamed, never held whole


def random_fasta(rng) -> tuple[bytes, list[tuple[str, str]]]:
    """A FASTA with wrapped, empty and blank-line-separated records; its records as written."""
    records, lines = [], []
    for i in range(rng.randrange(1, 8)):
        seq = "".join(rng.choice("ACGTN") for _ in range(rng.randrange(0, 60)))
        records.append((f"r{i}", seq))
        lines.append(f">r{i} some description")
        width = rng.randrange(1, 20)
        lines += [seq[k:k + width] for k in range(0, len(seq), width)]
        lines += [""] * rng.randrange(0, 2)
    return ("\n".join(lines) + "\n").encode(), records


def test_records_read_the_same_whatever_the_block_boundaries(tmp_path, monkeypatch):
    import random

    from vnp.seq import seqio

    original = seqio._blocks
    rng = random.Random(3)
    for _ in range(150):
        data, expected = random_fasta(rng)
        size = rng.randrange(1, 30)
        monkeypatch.setattr(seqio, "_blocks", lambda path, size=size: original(path, size=size))
        assert records_of(tmp_path, data) == expected
        line = rng.randrange(len(data.split(b"\n")) - 1)
        lines = data.split(b"\n")
        if not lines[line].startswith(b">"):  # a bad letter on a sequence line names that line
            lines[line] += b"!"
            with pytest.raises(InputError, match=rf"\(line {line + 1}\): invalid character '!'"):
                records_of(tmp_path, b"\n".join(lines))


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
    leftovers = [out / "work" / "sequences.bin.tmp", out / "work" / "ids.txt.tmp", out / "chunks.tsv.tmp"]
    for path in leftovers:
        path.write_bytes(b"x" * 1000)
    (out / "work" / "sequences.bin").write_bytes(b"ACGT")
    RunFolder(out).remove_leftovers()
    assert not any(path.exists() for path in leftovers) and (out / "work" / "sequences.bin").exists()


SLOW_PACKING = """
import sys, time
import vnp.run.plan as plan

original = plan._pack

def slow_pack(inputs, tmp, work_dir, read):
    def slow_pieces(path):
        for piece in read(path):
            time.sleep(0.5)  # a long packing pass
            yield piece
    return original(inputs, tmp, work_dir, slow_pieces)

plan._pack = slow_pack  # (pack_inputs binds its reader as a default: patching plan.iter_pieces is too late)
from vnp.predict import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("signalled", [0, 1])
def test_sigterm_while_preparing_stops_every_rank_at_once(tiny_pack, tmp_path, signalled):
    """Processes started by hand (SLURM variables): SIGTERM to one rank while rank 0 packs the inputs."""

    script = tmp_path / "slow.py"
    script.write_text(SLOW_PACKING)
    fasta = tmp_path / "in.fa"
    fasta.write_text("".join(f">s{i}\nACGTACGT\n" for i in range(200)))
    out = tmp_path / "out"
    job_id = slurm_job_id()
    procs = []
    for rank in range(2):
        env = {**child_env(), "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank), "SLURM_NTASKS": "2",
               "SLURM_NODELIST": "localhost", "SLURM_JOB_ID": job_id}
        procs.append(subprocess.Popen([sys.executable, str(script), str(fasta), "-o", str(out), f"pack={tiny_pack}",
                                       "progress=false", "threads=1", "dist.timeout_s=120"], env=env, cwd=ROOT,
                                      stderr=subprocess.PIPE, text=True))
    deadline = time.time() + 120
    while not (out / "work" / "sequences.bin.tmp").exists():
        assert all(p.poll() is None for p in procs) and time.time() < deadline
        time.sleep(0.05)
    procs[signalled].send_signal(signal.SIGTERM)
    stopped = time.time()
    codes = [p.wait(timeout=60) for p in procs]
    assert time.time() - stopped < 30  # not the 100 s the packing would take, nor dist.timeout_s
    stderr = [p.stderr.read() for p in procs]
    assert codes == [143, 143], stderr
    assert stderr[0].strip() == (f"vnp: stopped by signal while preparing the run in {out}; nothing was lost. "
                                 "Run the same command again to start it.") and not stderr[1].strip()
    assert not list(out.rglob("*.tmp"))


def hand_started_ranks(args: list[str], ranks: int = 2, **extra_env) -> list[subprocess.Popen]:
    """`vnp.predict` processes started by hand with SLURM variables (no agent watching them)."""

    job_id = slurm_job_id()
    procs = []
    for rank in range(ranks):
        env = {**child_env(), "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank), "SLURM_NTASKS": str(ranks),
               "SLURM_NODELIST": "localhost", "SLURM_JOB_ID": job_id, **extra_env}
        procs.append(subprocess.Popen([sys.executable, *args], env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True))
    return procs


@pytest.mark.slow
def test_a_killed_rank_is_named_by_rank_0(tiny_pack, tmp_path):
    fasta = write_long_input(tmp_path / "long.fa", n=200)
    out = tmp_path / "out"
    procs = hand_started_ranks(["-m", "vnp.predict", str(fasta), "-o", str(out), f"pack={tiny_pack}",
                                "progress=false", "threads=1", "batch.unit_chunks=2", "dist.timeout_s=60",
                                "engine.commit_every_steps=4"])
    deadline = time.time() + 120
    while not list((out / "work" / "parts").glob("part-*.npz")):
        assert all(p.poll() is None for p in procs) and time.time() < deadline
        time.sleep(0.05)
    os.kill(rank_pid(out, 1), signal.SIGKILL)  # as the OOM killer does
    assert procs[0].wait(timeout=90) == 1
    procs[1].wait(timeout=30)
    stderr = procs[0].stderr.read()
    procs[1].stderr.close()
    assert error_lines(stderr) == [stderr.strip()], stderr
    assert stderr.startswith("vnp: error: rank 1 stopped answering (killed, out of memory, or its node lost?)")


@pytest.mark.slow
def test_the_rendezvous_respects_the_timeout_with_a_foreign_program_on_master_port(tmp_path):
    import socket

    fasta = tmp_path / "in.fa"
    fasta.write_text(">s1\nACGT\n")
    with socket.socket() as foreign:  # accepts connections and never answers
        foreign.bind(("127.0.0.1", 0))
        foreign.listen(8)
        port = foreign.getsockname()[1]
        env = {**child_env(), "RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        started = time.time()
        proc = subprocess.run([sys.executable, "-m", "vnp.predict", str(fasta), "-o", str(tmp_path / "out"),
                               "pack=tiny", "dist.timeout_s=3"], env=env, cwd=ROOT, capture_output=True, text=True,
                              timeout=120)
    assert proc.returncode == 1 and time.time() - started < 60
    assert proc.stderr.strip() == (f"vnp: error: rank 1: no rendezvous with the other ranks at 127.0.0.1:{port} "
                                   "within dist.timeout_s=3 s (is another program listening on MASTER_PORT?)")


def test_a_header_line_of_more_than_1_mib_is_refused(tmp_path):
    with pytest.raises(InputError, match="line 1: header line longer than 1 MiB"):
        records_of(tmp_path, b">" + b"x" * (2 << 20) + b"\nACGT\n")


def test_a_fifo_as_pack_is_refused(tmp_path, no_hang):
    with pytest.raises(InputError, match="pack.yaml: model pack is a FIFO"):
        load_pack(str(fifo(tmp_path / "pack.yaml")))
    folder = tmp_path / "folder"
    folder.mkdir()
    fifo(folder / "pack.yaml")
    with pytest.raises(InputError, match="folder/pack.yaml: model pack is a FIFO"):
        load_pack(str(folder))


def test_an_esm_checkpoint_of_stride_0_views_is_refused(tmp_path):
    from vnp.models.esm import load_esm

    path = tmp_path / "esm2_bomb.pt"
    torch.save({"model": {"encoder.embed_tokens.weight": torch.zeros(1).expand(10**9, 2560)}, "cfg": {}}, path)
    with pytest.raises(InputError, match=r"esm2_bomb.pt: model.encoder.embed_tokens.weight claims shape"):
        load_esm(path)


def test_a_file_name_with_a_control_character_is_refused_escaped(tmp_path):
    from vnp.run.plan import check_inputs

    path = tmp_path / "evil\x1b[2Jname.fa"
    path.write_text(">s\nACGT\n")
    with pytest.raises(InputError) as caught:
        check_inputs([str(path)])
    assert "\x1b" not in str(caught.value) and "the file name contains the control character U+001B" in str(caught.value)


@pytest.mark.parametrize("key, value", [("hidden_size", 400_000), ("alibi_starting_size", 10**6),
                                        ("num_hidden_layers", 10**9)])
def test_a_dnabert_config_describing_a_huge_model_is_refused_before_building(tiny_pack, tmp_path, key, value):
    from vnp.models.dnabert import load_dnabert

    folder = tmp_path / "dnabert"
    copy_folder(tiny_pack / "dnabert", folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, key: value}))
    with pytest.raises(InputError, match=r"dnabert/config.json: describes a model of \d+ MiB, far more than its "):
        load_dnabert(str(folder))
