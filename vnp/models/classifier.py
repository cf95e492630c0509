"""VirNucPro's MLP classifier: the published `.pth` files, read safely, and our own safetensors format.

The published `300_model.pth` / `500_model.pth` are whole modules saved with `torch.save(model)` from
a training script, so their pickle names `__main__.MLPClassifier`. We read them with torch's
weights-only unpickler, allowing only the handful of classes such a file needs and mapping the
script's class onto ours; anything else in the pickle is refused before it can run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from vnp.support.errors import InputError
from vnp.models.checkpoints import check_tensor_sizes, first_line, restricted_load
from vnp.support.paths import regular_file

WEIGHTS_NAME = "classifier.safetensors"
CONFIG_NAME = "classifier.json"
FORMAT = "vnp-classifier"


class MLPClassifier(nn.Module):
    """VirNucPro's head: 3328 features (768 DNABERT-S + 2560 ESM2-3B) -> 512 -> 2 classes.

    Layout and attribute names match the original `train.py`, so its state dicts load unchanged.
    Always used in eval mode (BatchNorm uses running stats, Dropout is off).
    """

    def __init__(self, input_dim: int = 3328, hidden_dim: int = 512, num_class: int = 2):
        super().__init__()
        self.hidden_layer = nn.Linear(input_dim, hidden_dim)
        self.bn1 = nn.BatchNorm1d(hidden_dim)
        self.output_layer = nn.Linear(hidden_dim, num_class)
        self.dropout = nn.Dropout(0.5)

    @property
    def dims(self) -> tuple[int, int, int]:
        """(input_dim, hidden_dim, num_class), read from the weights."""
        hidden, inputs = self.hidden_layer.weight.shape
        return inputs, hidden, self.output_layer.weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.hidden_layer(x)  # (N, H)
        x = self.bn1(x)
        x = F.relu(x)
        x = self.dropout(x)
        return self.output_layer(x)  # (N, C) logits


@torch.inference_mode()
def score(model: MLPClassifier, x: torch.Tensor) -> torch.Tensor:
    """Softmax probabilities (N, C) as float32.

    For VirNucPro column 0 is score1 = P(others) and column 1 is score2 = P(virus).
    """
    input_dim = model.dims[0]
    if x.ndim != 2 or x.shape[1] != input_dim:
        raise ValueError(f"classifier expects features of shape (N, {input_dim}), got {tuple(x.shape)}")
    model.eval()
    weight = model.hidden_layer.weight
    logits = model(x.to(device=weight.device, dtype=weight.dtype))
    return torch.softmax(logits.float(), dim=1)


def build_tiny_classifier(input_dim: int, seed: int, hidden_dim: int = 16, num_class: int = 2) -> MLPClassifier:
    """A small random classifier for tests, with non-trivial BatchNorm running statistics.

    Uses its own generator, so the global torch RNG is left as it was.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        model = MLPClassifier(input_dim, hidden_dim, num_class)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            noise = torch.randn(tensor.shape, generator=gen)
            if name == "bn1.running_var":
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=gen))  # must stay positive
            elif name == "bn1.weight":
                tensor.copy_(1.0 + 0.2 * noise)
            elif name.endswith("weight"):
                tensor.copy_(noise / tensor.shape[1] ** 0.5)
            else:  # biases and running_mean
                tensor.copy_(0.3 * noise)
    return model.eval()


# ---------------------------------------------------------------------------------------------
# Loading and saving

# What a `torch.save(model)` of the original's MLPClassifier references beyond torch's defaults.
LEGACY_GLOBALS = [
    (MLPClassifier, "__main__.MLPClassifier"),  # the training script's class, mapped to ours
    MLPClassifier,  # the same layout saved from vnp itself
    nn.Linear,
    nn.BatchNorm1d,
    nn.Dropout,
]


def load_classifier(path: str | Path, input_dim: int | None = None) -> MLPClassifier:
    """Load a classifier in eval mode on CPU.

    `path` is a legacy pickled `.pth` (or a pickled state dict), or our format: a folder with
    `classifier.safetensors` + `classifier.json`, or `X.safetensors` with `X.json` beside it.
    `input_dim`, when given, must match the weights.
    """
    path = Path(path)
    if path.is_dir() or path.suffix == ".safetensors":
        model = _load_safetensors(path, input_dim)
    else:
        model = _load_legacy(path, input_dim)
    if input_dim is not None and model.dims[0] != input_dim:
        raise InputError(f"{path}: classifier expects {model.dims[0]} features, not {input_dim}")
    return model


def classifier_files(path: Path) -> list[str]:
    """The files a classifier is read from, by name, relative to the folder that holds them."""
    if path.is_dir():
        return [WEIGHTS_NAME, CONFIG_NAME]
    if path.suffix == ".safetensors":
        return [path.name, path.with_suffix(".json").name]
    return [path.name]


def save_classifier(model: MLPClassifier, out_dir: str | Path, provenance: dict | None = None) -> Path:
    """Write `classifier.safetensors` + `classifier.json` into `out_dir`; returns the folder."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    input_dim, hidden_dim, num_class = model.dims
    state = {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
    save_file(state, str(out_dir / WEIGHTS_NAME), metadata={"format": FORMAT})
    config = {
        "format": FORMAT,
        "input_dim": input_dim,
        "hidden_dim": hidden_dim,
        "num_class": num_class,
        "provenance": {"torch": torch.__version__, **(provenance or {})},
    }
    (out_dir / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return out_dir


def _load_legacy(path: Path, input_dim: int | None) -> MLPClassifier:
    obj = restricted_load(path, LEGACY_GLOBALS, "classifier checkpoint")
    if isinstance(obj, nn.Module):
        state = _plain_state(obj)
    elif isinstance(obj, Mapping) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state = dict(obj)
    else:
        raise InputError(f"{path}: expected a pickled MLPClassifier or its state dict, got {type(obj).__name__}")
    return _from_state(state, path, input_dim)


def _plain_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers of an unpickled module and its direct children, read straight from
    their attribute dicts: calling `state_dict()` would run whatever hooks the pickle set."""
    children = _as_mapping(vars(module).get("_modules"))
    state = {}
    for prefix, part in [("", module), *((f"{name}.", child) for name, child in children.items())]:
        if not isinstance(part, nn.Module):
            continue
        for group in ("_parameters", "_buffers"):
            for name, tensor in _as_mapping(vars(part).get(group)).items():
                if isinstance(tensor, torch.Tensor):
                    state[prefix + name] = tensor.detach()
    return state


def _as_mapping(value: Any) -> Mapping:
    return value if isinstance(value, Mapping) else {}


def _load_safetensors(path: Path, input_dim: int | None) -> MLPClassifier:
    weights, config_path = (
        (path / WEIGHTS_NAME, path / CONFIG_NAME) if path.is_dir() else (path, path.with_suffix(".json"))
    )
    for needed in (weights, config_path):
        regular_file(needed, "classifier file")
    dims = _read_dims(config_path)
    try:
        state = load_file(str(weights))
    except Exception as err:  # safetensors raises its own SafetensorError for corrupt files
        raise InputError(f"{weights}: not a readable safetensors file ({first_line(err)})") from None
    model = _from_state(state, weights, input_dim)
    if model.dims != (dims["input_dim"], dims["hidden_dim"], dims["num_class"]):
        said = tuple(dims.values())
        raise InputError(f"{weights}: weights have dims {model.dims}, but {config_path.name} says {said}")
    return model


def _read_dims(config_path: Path) -> dict[str, int]:
    """input_dim, hidden_dim and num_class from classifier.json: positive integers, strict JSON."""
    def refuse_constant(name: str):
        raise ValueError(f"{name} is not valid JSON")

    try:
        config = json.loads(config_path.read_text(encoding="utf-8"), parse_constant=refuse_constant)
        if not isinstance(config, dict):
            raise ValueError(f"expected a JSON object, got {type(config).__name__}")
        dims = {key: config[key] for key in ("input_dim", "hidden_dim", "num_class")}
    except KeyError as err:
        raise InputError(f"{config_path}: not a valid classifier config (missing key {err})") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise InputError(f"{config_path}: not a valid classifier config ({first_line(err)})") from None
    for key, value in dims.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{config_path}: {key} must be a positive integer, got {value!r}")
    return dims


def _check_sizes(state: Mapping[str, torch.Tensor], path: Path, input_dim: int | None) -> None:
    """Refuse what would allocate far more than the file holds, before anything is allocated: a
    tensor cannot hold more bytes than its file (stride-0 views claim any size for a few bytes),
    and the input width must be the pack's."""
    check_tensor_sizes(iter(state.items()), path)
    weight = state.get("hidden_layer.weight")
    if input_dim is not None and weight is not None and weight.ndim == 2 and weight.shape[1] != input_dim:
        raise InputError(f"{path}: classifier expects {weight.shape[1]} features, not {input_dim}")


def _from_state(state: Mapping[str, torch.Tensor], path: Path, input_dim: int | None = None) -> MLPClassifier:
    """A fresh MLPClassifier holding `state`, sizes and shapes checked first; eval mode, float32, CPU."""
    _check_sizes(state, path, input_dim)
    try:
        hidden_dim, input_dim = state["hidden_layer.weight"].shape
        num_class = state["output_layer.weight"].shape[0]
    except (KeyError, ValueError) as err:
        raise InputError(f"{path}: not an MLPClassifier state (missing or bad {first_line(err)})") from None
    with torch.random.fork_rng(devices=[]):  # the random init is overwritten; keep the caller's RNG
        model = MLPClassifier(input_dim, hidden_dim, num_class)
    expected = model.state_dict()
    if set(state) != set(expected):
        raise InputError(f"{path}: unexpected MLPClassifier weights {sorted(set(state) ^ set(expected))}")
    for name, tensor in expected.items():
        if state[name].shape != tensor.shape:
            got = tuple(state[name].shape)
            raise InputError(f"{path}: {name} has shape {got}, expected {tuple(tensor.shape)}")
    model.load_state_dict({name: t.to(expected[name].dtype) for name, t in state.items()})
    return model.eval()
