"""The workflows of launch/: Snakemake and CWL run for real on the demo data (tiny pack), the WDL
checked by miniwdl, the nf-core module checked statically against the command those runs ran."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT, child_env

LAUNCH = ROOT / "launch"
EXAMPLE = ROOT / "vnp" / "data" / "example.fa"
BIN = Path(sys.executable).parent
# The one `vnp predict` command every workflow builds, its input and output folder as placeholders:
# Snakemake and CWL must have run it, and the nf-core module must build it.
COMMAND = ["vnp", "predict", "INPUT", "-o", "OUT", "threads=1", "pack=tiny"]


def tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.skip(f"{name} is not installed (pip install -e .[test])")
    return str(path)


def workflow_env() -> dict[str, str]:
    """This checkout's vnp (PYTHONPATH) with the venv's `vnp` script first on PATH."""
    env = child_env()
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
    return env


def placeholders(tokens: list[str], input_name: str) -> list[str]:
    """A command with its input file and output folder replaced by INPUT and OUT."""
    out = tokens[tokens.index("-o") + 1]
    return ["INPUT" if Path(t).name == input_name else "OUT" if t == out else t for t in tokens]


def cwltool_command(log: str) -> list[str]:
    """The command cwltool logged for its job (`... $ vnp \\` then one argument a line)."""
    lines = log.splitlines()
    first = next(i for i, line in enumerate(lines) if re.search(r"\$ vnp \\$", line))
    words = ["vnp"]
    for line in lines[first + 1:]:
        words.append(line.strip().removesuffix("\\").strip())
        if not line.endswith("\\"):
            break
    return [shlex.split(w)[0] for w in words]


# --- Snakemake -------------------------------------------------------------------------------

@pytest.mark.slow
def test_snakemake_runs_vnp_predict_per_sample(tmp_path):
    snakemake = tool("snakemake")
    (tmp_path / "samples.tsv").write_text(f"sample\tinput\nexample\t{EXAMPLE}\n")
    proc = subprocess.run([snakemake, "-s", str(LAUNCH / "snakemake" / "Snakefile"), "--cores", "1", "-p",
                           "--config", "samples=samples.tsv", "pack=tiny"],
                          cwd=tmp_path, env=workflow_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = (line.removeprefix("Shell command: ") for line in (proc.stdout + proc.stderr).splitlines())
    shell = next(line for line in lines if line.startswith("vnp predict "))
    ran = shlex.split(shell.split(" 2> ")[0])
    assert placeholders(ran, EXAMPLE.name) == COMMAND
    out = tmp_path / "results" / "example"
    header = (out / "contigs.tsv").read_text().splitlines()[0]
    assert header.startswith("sequence_id\tinput\tlength")
    assert json.loads((out / "run.json").read_text())["counts"]
    summary = (tmp_path / "results" / "summary.tsv").read_text().splitlines()
    assert summary[0].startswith("sample\tinput\tsequences") and summary[-1].startswith("example\ttotal\t11\t")


def test_snakemake_rule_declares_gpu_threads_pack_and_named_outputs(tmp_path):
    snakemake = tool("snakemake")
    (tmp_path / "samples.tsv").write_text(f"sample\tinput\na\t{EXAMPLE}\n")
    proc = subprocess.run([snakemake, "-s", str(LAUNCH / "snakemake" / "Snakefile"), "-n", "-p", "--cores", "4",
                           "--config", "samples=samples.tsv", "pack=300", "threads=4", "gpus=2",
                           "extra=classifier=/models/300_model.pth"],
                          cwd=tmp_path, env=workflow_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout + proc.stderr
    assert "gpu=2" in text
    assert ("vnp predict " + str(EXAMPLE) + " -o results/a threads=4 pack=300 classifier=/models/300_model.pth"
            in text)
    rule = (LAUNCH / "snakemake" / "vnp.smk").read_text()
    for name in ("per_frame", "highestscore", "chunks", "contigs", "regions", "summary", "report", "run_json"):
        assert re.search(rf"^        {name}=\"results/{{sample}}/", rule, re.M), name


# --- CWL -------------------------------------------------------------------------------------

def run_cwltool(tmp_path: Path, tool_file: str, job: dict, outdir: str) -> tuple[dict, str]:
    cwltool = tool("cwltool")
    (tmp_path / f"{outdir}.yml").write_text(yaml.safe_dump(job))
    proc = subprocess.run([cwltool, "--no-container", "--preserve-environment", "PYTHONPATH", "--outdir",
                           str(tmp_path / outdir), str(LAUNCH / "cwl" / tool_file), str(tmp_path / f"{outdir}.yml")],
                          cwd=tmp_path, env=workflow_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout), proc.stderr


@pytest.mark.slow
def test_cwl_predict_then_call_with_cwltool(tmp_path):
    job = {"reads": [{"class": "File", "path": str(EXAMPLE)}], "pack": "tiny", "threads": 1, "prefix": "example"}
    outputs, log = run_cwltool(tmp_path, "vnp-predict.cwl", job, "predicted")
    assert placeholders(cwltool_command(log), EXAMPLE.name) == COMMAND
    files = {name: Path(value["path"]) for name, value in outputs.items()}
    assert files["out_dir"] == tmp_path / "predicted" / "example"
    for name in ("per_frame", "highestscore", "chunks", "contigs", "regions", "viral_sequences", "summary",
                 "report", "run_json"):
        assert files[name].parent == files["out_dir"] and files[name].is_file(), name  # viral FASTA may be empty
    assert files["highestscore"].read_text().startswith("Modified_ID\tIs_Virus\n")

    job = {"run": {"class": "Directory", "path": str(files["out_dir"])},
           "settings": ["call.min_score=0.9", "tables.highestscore_scores=true"]}
    called, _ = run_cwltool(tmp_path, "vnp-call.cwl", job, "called")
    table = Path(called["highestscore"]["path"]).read_text()
    assert table.startswith("Modified_ID\tIs_Virus\tmax_score_0\tmax_score_1\n")
    assert files["highestscore"].read_text().startswith("Modified_ID\tIs_Virus\n")  # the input run is untouched


def test_cwl_gpu_variant_carries_the_cuda_requirement(tmp_path):
    cwltool = tool("cwltool")
    gpu = str(LAUNCH / "cwl" / "vnp-predict-gpu.cwl")
    proc = subprocess.run([cwltool, "--enable-ext", "--print-pre", gpu], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    document = json.loads(proc.stdout)
    hints = {h["class"].rsplit("#", 1)[-1].split(":")[-1]: h for h in document["hints"]}
    assert hints["CUDARequirement"]["cudaDeviceCountMin"] == 1
    assert hints["DockerRequirement"]["dockerPull"] == docker_tag()
    assert document["baseCommand"] == ["vnp", "predict"]  # the rest is vnp-predict.cwl's ($mixin)
    if shutil.which("nvidia-smi") is None:  # cwltool enforces it: no GPU here, no run
        (tmp_path / "job.yml").write_text(yaml.safe_dump({"reads": [{"class": "File", "path": str(EXAMPLE)}]}))
        proc = subprocess.run([cwltool, "--enable-ext", "--no-container", gpu, str(tmp_path / "job.yml")],
                              cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert proc.returncode != 0 and "Could not satisfy CUDARequirement" in proc.stderr


def docker_tag() -> str:
    import vnp

    return f"vnp:{vnp.__version__}-cuda"


# --- WDL -------------------------------------------------------------------------------------

def test_wdl_passes_miniwdl_check_and_keeps_the_broad_interface():
    miniwdl = tool("miniwdl")
    wdl = LAUNCH / "wdl" / "vnp.wdl"
    proc = subprocess.run([miniwdl, "check", "--suppress", "UnknownRuntimeKey,CommandShellCheck", str(wdl)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    import WDL

    document = WDL.load(str(wdl))
    task = next(t for t in document.tasks if t.name == "virnucpro")
    inputs = {d.name for d in task.inputs}
    # the Broad task's inputs that mean something to vnp keep their names
    assert {"in_fasta", "expected_length", "parallel", "gpus", "machine_mem_gb", "cpu", "accelerator_type",
            "accelerator_count", "gpu_type", "gpu_count", "vm_size", "docker"} <= inputs
    assert {"pack", "classifier", "model_pack_tgz"} <= inputs
    outputs = {d.name: str(d.type) for d in task.outputs}
    assert outputs["highestscore_tsv"] == "File" and outputs["virnucpro_tgz"] == "File"
    assert outputs["virnucpro_version"] == "String"
    assert {"gpu", "gpuType", "gpuCount", "acceleratorType", "acceleratorCount", "docker"} <= set(task.runtime)
    command = "".join(str(part) for part in task.command.parts)
    assert "tables.highestscore_scores=true" in command and "vnp --version | tee VERSION" in command
    assert ".virnucpro.tgz" in command and "tar -czf" in command
    assert task.inputs[[d.name for d in task.inputs].index("docker")].expr.literal.value == docker_tag()


# --- nf-core ---------------------------------------------------------------------------------

MODULE = LAUNCH / "nf-core" / "vnp" / "predict"


def nf_block(text: str, name: str) -> str:
    """The body of a `name:` block of a Nextflow process (up to the next block label)."""
    match = re.search(rf"^    {name}:\n(.*?)(?=^    \w+:\n|^}}$)", text, re.M | re.S)
    assert match, name
    return match.group(1)


def test_nfcore_module_outputs_inputs_and_files():
    main = (MODULE / "main.nf").read_text()
    meta = yaml.safe_load((MODULE / "meta.yml").read_text())
    env = yaml.safe_load((MODULE / "environment.yml").read_text())
    assert re.search(r"^process VNP_PREDICT \{$", main, re.M) and "label 'process_gpu'" in main
    emits = re.findall(r"emit: (\w+)", nf_block(main, "output"))
    assert emits and list(meta["output"]) == emits
    for name, channels in meta["output"].items():
        for entry in channels:
            for item in (entry if isinstance(entry, list) else [entry]):
                (key,) = item
                if key != "meta":  # every file meta.yml names is a path() of its emit line
                    line = next(l for l in main.splitlines() if l.rstrip().endswith(f"emit: {name}"))
                    assert f'path("{key}")' in line or f'path "{key}"' in line, (name, key)
    body = nf_block(main, "input")
    assert "tuple val(meta), path(fasta)" in body and "val pack" in body
    assert [list(item)[0] for item in meta["input"][0]] == ["meta", "fasta"] and list(meta["input"][1]) == ["pack"]
    stub = nf_block(main, "stub")
    for line in nf_block(main, "output").splitlines():
        made = re.search(r'path\("\$\{prefix\}/([^"]+)"\)', line)
        if made:
            assert f"touch $prefix/{made.group(1)}" in stub
    assert "versions.yml" in stub and "versions.yml" in nf_block(main, "script")
    import vnp

    assert env["dependencies"] == [f"bioconda::vnp={vnp.__version__}"]
    assert f"'{docker_tag()}'" in main


def test_nfcore_module_builds_the_command_the_workflow_tests_ran():
    script = nf_block((MODULE / "main.nf").read_text(), "script")
    line = next(l.strip() for l in script.splitlines() if l.strip().startswith("vnp predict"))
    values = {"fasta": "INPUT", "prefix": "OUT", "task.cpus": "1", "pack": "tiny", "args": ""}
    built = re.sub(r"\$\{?([\w.]+)\}?", lambda m: values[m.group(1)], line)
    assert shlex.split(built) == COMMAND
