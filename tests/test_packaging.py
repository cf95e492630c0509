"""Recipes others build vnp from: the bioconda-style recipe and the container files agree with
pyproject.toml and vnp.__version__."""

from __future__ import annotations

import re
import tomllib

import jinja2
import yaml
from packaging.requirements import Requirement

import vnp
from tests.helpers import ROOT

CONTAINERS = ROOT / "launch" / "containers"
# PyPI name -> conda name where they differ
CONDA_NAMES = {"torch": "pytorch", "matplotlib": "matplotlib-base"}


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def conda_recipe() -> dict:
    """launch/conda/meta.yaml rendered as conda-build would (its Jinja functions as stand-ins)."""
    text = (ROOT / "launch" / "conda" / "meta.yaml").read_text()
    rendered = jinja2.Template(text).render(PYTHON="python", pin_subpackage=lambda name, **_: name)
    return yaml.safe_load(rendered)


def test_conda_run_requirements_are_pyprojects_dependencies():
    project = pyproject()["project"]
    recipe = conda_recipe()
    run = [line.split(None, 1) for line in recipe["requirements"]["run"]]
    expected = [["python", project["requires-python"]]]
    for dependency in project["dependencies"]:
        req = Requirement(dependency)
        expected.append([CONDA_NAMES.get(req.name, req.name), str(req.specifier)])
    assert run == expected


def test_conda_recipe_is_noarch_with_the_entry_point_and_version_tests():
    recipe = conda_recipe()
    assert recipe["package"] == {"name": "vnp", "version": vnp.__version__}
    assert pyproject()["project"]["version"] == vnp.__version__
    assert recipe["build"]["noarch"] == "python"
    scripts = pyproject()["project"]["scripts"]
    assert recipe["build"]["entry_points"] == [f"{name} = {target}" for name, target in scripts.items()]
    assert recipe["test"]["commands"] == ["vnp --help", "vnp --version"]


def test_container_files_name_one_image():
    tag = f"vnp:{vnp.__version__}-cuda"
    dockerfile = (CONTAINERS / "Dockerfile").read_text()
    assert re.search(rf'org\.opencontainers\.image\.version="{re.escape(vnp.__version__)}"', dockerfile)
    assert f"docker build -t {tag} " in dockerfile
    assert re.search(r"^FROM \$\{BASE\}$", dockerfile, re.M) and "cuda" in dockerfile.split("ARG BASE=")[1].split()[0]
    assert "COPY vnp /src/vnp" in dockerfile and not re.search(r"\.(pth|pt|safetensors)\b", dockerfile.split("FROM")[1])
    definition = (CONTAINERS / "vnp.def").read_text()
    assert re.search(rf"^From: {re.escape(tag)}$", definition, re.M)
    assert re.search(r"^Bootstrap: docker-daemon$", definition, re.M)
    for path in ("launch/cwl/vnp-predict.cwl", "launch/cwl/vnp-call.cwl", "launch/wdl/vnp.wdl",
                 "launch/nf-core/vnp/predict/main.nf"):
        assert tag in (ROOT / path).read_text(), path
