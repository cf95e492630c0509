"""A non-editable install works from anywhere: the wheel carries every file vnp reads at run time."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.helpers import ROOT

# Run inside the fresh environment, away from the checkout.
CHECK = """
import sys
from pathlib import Path
import vnp
from vnp.demo import example_path
from vnp.models.pack import load_pack
assert Path(vnp.__file__).is_relative_to(Path(sys.prefix)), vnp.__file__
for name in ("500", "300"):
    pack = load_pack(name, classifier="model.pth")
    print(pack.name, pack.chunk_length, pack.dnabert, pack.esm, pack.esm_layer, pack.embedding_dim)
print(example_path().stat().st_size > 0)
"""


@pytest.mark.slow
def test_wheel_installed_elsewhere_resolves_the_builtin_packs(tmp_path):
    pytest.importorskip("setuptools", reason="building the wheel offline needs setuptools in this environment")
    source = tmp_path / "source"  # a copy, so the build leaves nothing in the checkout
    shutil.copytree(ROOT / "vnp", source / "vnp", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", str(source),
                    "-w", str(tmp_path / "wheels")], check=True, cwd=tmp_path, capture_output=True)
    (wheel,) = (tmp_path / "wheels").glob("vnp-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)], check=True,
                   capture_output=True)
    # torch and the other dependencies come from this interpreter's environment, appended after
    # the new environment's own packages (so the wheel's vnp is the one imported)
    new_site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              check=True, capture_output=True, text=True).stdout.strip()
    Path(new_site, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {"PATH": str(venv / "bin"), "HOME": str(tmp_path)}
    proc = subprocess.run([str(python), "-c", CHECK], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "500 500 zhihan1996/DNABERT-S esm2_t36_3B_UR50D 36 3328",
        "300 300 zhihan1996/DNABERT-S esm2_t36_3B_UR50D 36 3328",
        "True",
    ]
    proc = subprocess.run([str(venv / "bin" / "vnp"), "--help"], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=120)
    assert proc.returncode == 0 and "predict" in proc.stdout, proc.stderr


def test_module_entry_points_work_from_the_folder_that_holds_the_checkout(tmp_path):
    """`git clone ... vnp`, then `python -m vnp.predict` from the parent folder: the clone folder (no
    __init__.py) must not shadow the installed package as a namespace package."""
    (tmp_path / "vnp").symlink_to(ROOT, target_is_directory=True)
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    for module in ("vnp.predict", "vnp.train", "vnp.embed"):
        proc = subprocess.run([sys.executable, "-m", module, "--help"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"{module}: {proc.stderr[-400:]}"
        assert "usage:" in proc.stdout
