"""The demo's bundled example and the demo job itself."""

from __future__ import annotations

from vnp.demo import example_path, write_example
from vnp.demo import main as demo_main


def test_bundled_example_is_what_the_generator_makes(tmp_path):
    write_example(tmp_path / "example.fa")
    assert (tmp_path / "example.fa").read_bytes() == example_path().read_bytes()


def test_demo_runs_and_says_the_labels_are_meaningless(tmp_path, capsys):
    assert demo_main([str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "RANDOM weights" in out
    last = out.strip().splitlines()[-4:]  # the last lines: how to get the real models
    assert "vnp models fetch 500 -o models/500" in last[1] and "pack=models/500/pack.yaml" in last[2]
    rows = (tmp_path / "demo" / "contigs.tsv").read_text().splitlines()
    assert len(rows) == 1 + 11  # every bundled sequence has a row
