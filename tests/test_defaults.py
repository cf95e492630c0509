"""Each default spelled once: the engine's settings are the `engine.*` keys, report's call rules fall
back to `call.*`'s defaults, `vnp embed` resolves precision as `vnp predict` does, and YAML is read by
vnp's own strict loader (no private OmegaConf module)."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from vnp.support.config import CallConfig, EngineConfig, PredictConfig, read_yaml_mapping
from vnp.support.errors import InputError


def test_the_engine_takes_the_engine_config_itself():
    import vnp.run.engine as engine

    assert not hasattr(engine, "EngineSettings")
    assert {"balance", "prefetch", "window"} <= {f.name for f in dataclasses.fields(EngineConfig)}


def test_report_call_rules_of_an_older_run_are_call_config_defaults():
    from vnp.results.report.data import call_rules

    rules = call_rules({})
    assert (rules.min_score, rules.min_fraction, rules.recorded) == \
        (CallConfig().min_score, CallConfig().min_fraction, False)
    assert call_rules({"calls": {"call": {"min_score": 0.7}}}).min_fraction == CallConfig().min_fraction
    assert all(f.default is dataclasses.MISSING for f in dataclasses.fields(type(rules)))


def test_embed_precision_defaults_to_predicts():
    from vnp.embed import add_arguments
    from vnp.models import resolve_precision

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["dnabert", "in.fa", "-m", "model", "-o", "out.npz"])
    assert args.precision == PredictConfig().precision == "auto"
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("fp16", "cpu") == "fp16"


@pytest.mark.parametrize("text, message", [
    ("batch:\n  unit_chunks: 2\n  unit_chunks: 3\n", "found duplicate key unit_chunks"),
    ("threads: 1\nthreads: 2\n", "found duplicate key threads"),
])
def test_yaml_keys_given_twice_are_refused_at_any_depth(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        read_yaml_mapping(path, "config file")


def test_yaml_numbers_read_as_numbers(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 1e-3\n  gamma: .5\nname: 1e3x\n")
    assert read_yaml_mapping(path, "config file") == {"train": {"lr": 0.001, "gamma": 0.5}, "name": "1e3x"}
