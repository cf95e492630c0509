"""The MLP classifier: the original's pickled `.pth` read safely, and our safetensors format."""

import builtins
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import ORIGINAL_SCRIPT, built_once
from vnp.support.errors import InputError
from vnp.models.classifier import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    MLPClassifier,
    build_tiny_classifier,
    load_classifier,
    save_classifier,
    score,
)

INPUT_DIM = 12

@pytest.fixture(scope="module")
def legacy(tmp_path_factory):
    """(model.pth, x, expected scores) made exactly as the original did, in a subprocess (once per
    test run: `built_once`)."""
    def build(folder: Path) -> None:
        (folder / "train.py").write_text(ORIGINAL_SCRIPT)
        subprocess.run([sys.executable, "train.py", str(INPUT_DIM)], cwd=folder, check=True)

    folder = built_once(tmp_path_factory, "legacy-classifier", build)
    return folder / "model.pth", np.load(folder / "x.npy"), np.load(folder / "expected.npy")


def test_legacy_pickle_gives_the_original_scores(legacy):
    path, x, expected = legacy
    model = load_classifier(path)
    assert type(model) is MLPClassifier and not model.training
    assert model.dims == (INPUT_DIM, 8, 2)
    got = score(model, torch.from_numpy(x))
    assert got.dtype == torch.float32 and got.shape == (10, 2)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-6, rtol=0)


def test_legacy_load_leaves_torch_settings_alone(legacy):
    before = set(torch.serialization.get_safe_globals())
    load_classifier(legacy[0])
    assert set(torch.serialization.get_safe_globals()) == before


def test_state_dict_pth_loads(legacy, tmp_path):
    model = load_classifier(legacy[0])
    torch.save(model.state_dict(), tmp_path / "state.pth")
    again = load_classifier(tmp_path / "state.pth")
    x = torch.from_numpy(legacy[1])
    assert torch.equal(score(again, x), score(model, x))


def test_safetensors_round_trip(legacy, tmp_path):
    model = load_classifier(legacy[0])
    out = save_classifier(model, tmp_path / "clf", provenance={"source": "model.pth"})
    config = json.loads((out / CONFIG_NAME).read_text())
    assert (config["input_dim"], config["hidden_dim"], config["num_class"]) == (INPUT_DIM, 8, 2)
    assert config["provenance"]["source"] == "model.pth"
    x = torch.from_numpy(legacy[1])
    for where in (out, out / WEIGHTS_NAME):
        assert torch.equal(score(load_classifier(where), x), score(model, x))


class RunsCode:
    """Pickles as a call of `fn(*args)`: what a malicious checkpoint would carry."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


@pytest.mark.parametrize(
    "container, zipped",
    [("module", True), ("state_dict", True), ("state_dict", False)],
    ids=["module", "state", "old-format"],
)
@pytest.mark.parametrize("kind", ["os.system", "builtins.eval"])
def test_foreign_globals_are_refused_without_running(legacy, tmp_path, kind, container, zipped):
    marker = tmp_path / "pwned"
    if kind == "os.system":
        payload, name = RunsCode(os.system, f"touch {marker}"), os.system.__module__ + ".system"
    else:
        payload, name = RunsCode(builtins.eval, f"open({str(marker)!r}, 'w')"), "builtins.eval"
    model = load_classifier(legacy[0])
    if container == "module":
        model.extra = payload  # rides along inside an otherwise valid pickled classifier
        obj = model
    else:
        obj = {**model.state_dict(), "extra": payload}
    path = tmp_path / "500_model.pth"
    torch.save(obj, path, _use_new_zipfile_serialization=zipped)
    with pytest.raises(InputError) as err:
        load_classifier(path)
    message = str(err.value)
    assert message.startswith(f"{path}: refusing to load: it references") and name in message
    assert "\n" not in message
    assert not marker.exists()


def test_module_in_old_file_format_is_refused(legacy, tmp_path):
    path = tmp_path / "old.pth"
    torch.save(load_classifier(legacy[0]), path, _use_new_zipfile_serialization=False)
    with pytest.raises(InputError, match="refusing to load: .* pre-1.6 file format"):
        load_classifier(path)


def test_wrong_input_dim_is_refused(legacy, tmp_path):
    with pytest.raises(InputError, match="expects 12 features, not 3328"):
        load_classifier(legacy[0], input_dim=3328)
    out = save_classifier(load_classifier(legacy[0]), tmp_path / "clf")
    config = json.loads((out / CONFIG_NAME).read_text())
    (out / CONFIG_NAME).write_text(json.dumps({**config, "input_dim": 3328}))
    with pytest.raises(InputError, match="dims"):
        load_classifier(out)
    with pytest.raises(ValueError, match=r"\(N, 12\)"):
        score(load_classifier(legacy[0]), torch.zeros(3, 3328))


def test_inconsistent_shapes_are_refused(tmp_path):
    state = build_tiny_classifier(INPUT_DIM, seed=0).state_dict()
    state["bn1.running_mean"] = torch.zeros(7)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(InputError, match="bn1.running_mean has shape"):
        load_classifier(tmp_path / "bad.pth")


def test_corrupt_and_missing_files(legacy, tmp_path):
    out = save_classifier(load_classifier(legacy[0]), tmp_path / "clf")
    weights = out / WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:100])
    cut = tmp_path / "cut.pth"
    cut.write_bytes(legacy[0].read_bytes()[:700])
    bad = [out, cut, tmp_path / "missing.pth", tmp_path / "empty_folder"]
    (tmp_path / "empty_folder").mkdir()
    for path in bad:
        with pytest.raises(InputError) as err:
            load_classifier(path)
        assert "\n" not in str(err.value)


def test_tiny_classifier(tmp_path):
    rng_before = torch.random.get_rng_state()
    a, b = build_tiny_classifier(INPUT_DIM, seed=1), build_tiny_classifier(INPUT_DIM, seed=1)
    assert torch.equal(torch.random.get_rng_state(), rng_before)
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
    assert not a.training and a.bn1.running_mean.abs().sum() > 0
    probs = score(a, torch.randn(5, INPUT_DIM))
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(5))
    assert not torch.equal(probs, score(build_tiny_classifier(INPUT_DIM, seed=2), torch.randn(5, INPUT_DIM)))
