"""The demo's bundled example and the demo job itself."""

from __future__ import annotations

import shutil

import pytest

from vnp.demo import example_path, example_sequences, write_example
from vnp.demo import main as demo_main


def test_bundled_example_is_what_the_generator_makes(tmp_path):
    write_example(tmp_path / "example.fa")
    assert (tmp_path / "example.fa").read_bytes() == example_path().read_bytes()


@pytest.mark.slow
def test_demo_finds_the_synthetic_viruses_and_the_provirus_and_says_it_is_synthetic(demo_run, tmp_path, capsys):
    shared, out = demo_run  # the session's demo run (conftest): its OUT and what it printed
    for name in (shared.name, f"{shared.name}_model"):  # a copy: the rerun below writes into it
        shutil.copytree(shared.parent / name, tmp_path / name.replace(shared.name, "demo", 1))
    assert "SYNTHETIC" in out and "TINY" in out
    last = out.strip().splitlines()[-4:]  # the last lines: how to get the real models
    assert "vnp models fetch 500 -o models/500" in last[1] and "pack=models/500/pack.yaml" in last[2]
    rows = [line.split("\t") for line in (tmp_path / "demo" / "contigs.tsv").read_text().splitlines()]
    label = {row[0]: row[rows[0].index("label")] for row in rows[1:]}
    assert len(label) == len(example_sequences())  # every bundled sequence has a row
    assert {k for k, v in label.items() if v == "virus"} == {"viral_1", "viral_2", "viral_3", "viral_4", "read_1"}
    assert {label[k] for k in ("host_1", "host_2", "host_3")} == {"others"}
    regions = (tmp_path / "demo" / "regions.tsv").read_text()
    assert "provirus_1\tprovirus_1|region_3001_5500\t3001\t5500\t" in regions and "\tpartial" in regions
    assert (tmp_path / "demo" / "viral_regions.fna").read_text().startswith(">provirus_1|region_3001_5500")
    # a second demo reuses the trained head instead of training again
    assert demo_main([str(tmp_path / "demo")]) == 0
    assert "reusing the head trained before" in capsys.readouterr().err
