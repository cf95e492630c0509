"""Model packs: the three models of a VirNucPro run, named in one place.

A pack is a folder holding `pack.yaml` (paths inside it are relative to the folder), or a YAML file,
or one of the built-in names: `500` and `300` (package data, vnp/packs/pack_500.yaml and pack_300.yaml:
the published models by hub id and fair-esm name; the classifier `.pth` is given by the user) and
`tiny` (random models of the real architectures, built offline in seconds for tests and the demo).

    vnp pack tiny DIR --chunk-length 500 --seed 0
    vnp pack convert --classifier 500_model.pth -o DIR
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import asdict, dataclass, fields
from importlib import resources
from pathlib import Path

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vnp.support.config import MIN_CHUNK_LENGTH, read_yaml_mapping
from vnp.support.errors import InputError, exit_on_input_error
from vnp.models.identity import file_digest, folder_digest, hub_snapshot_commit

# Built-in packs are package data (read with importlib.resources), so any install has them.
BUILTIN = {"500": "pack_500.yaml", "300": "pack_300.yaml"}

TINY_DNABERT = dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96)
TINY_ESM = dict(num_layers=2, embed_dim=64, attention_heads=4)


@dataclass
class ModelPack:
    name: str
    chunk_length: int
    dnabert: str  # HF hub id or a local snapshot folder
    esm: str  # fair-esm model name or a local .pt
    esm_layer: int | None  # None = last layer
    classifier: str | None  # legacy .pth or vnp classifier folder
    dnabert_dim: int
    esm_dim: int

    def __post_init__(self) -> None:
        if self.chunk_length < MIN_CHUNK_LENGTH:
            raise ValueError(f"chunk_length must be at least {MIN_CHUNK_LENGTH} (one codon), got {self.chunk_length}")
        for key in ("dnabert_dim", "esm_dim"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be positive, got {getattr(self, key)}")
        if self.esm_layer is not None and self.esm_layer < 0:
            raise ValueError(f"esm_layer must be >= 0 (or null for the last layer), got {self.esm_layer}")
        for key in ("dnabert", "esm"):
            if not str(getattr(self, key)).strip():
                raise ValueError(f"{key} must name a model, got an empty value")

    @property
    def embedding_dim(self) -> int:
        return self.dnabert_dim + self.esm_dim


def _read_yaml(path: Path) -> dict:
    return read_yaml_mapping(path, "model pack")


def pack_from_dict(data: dict, base: Path, origin: str) -> ModelPack:
    names = {f.name for f in fields(ModelPack)}
    unknown = set(data) - names
    missing = names - set(data) - {"classifier", "esm_layer"}
    if unknown or missing:
        problem = f"unknown keys {sorted(unknown)}" if unknown else f"missing keys {sorted(missing)}"
        raise InputError(f"{origin}: model pack has {problem}")
    values = {**{"classifier": None, "esm_layer": None}, **data}
    for key in ("dnabert", "esm", "classifier"):  # relative paths are relative to the pack
        value = values[key]
        if value and (base / str(value)).exists():
            values[key] = str((base / str(value)).resolve())
    try:  # the configuration's typed checks: `chunk_length: abc` names the key
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelPack), values))
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        reason = str(err).splitlines()[0]
        raise InputError(f"{origin}: model pack {'key ' + repr(key) + ': ' if key else ''}{reason}") from None
    except ValueError as err:
        raise InputError(f"{origin}: model pack {err}") from None


def load_pack(spec: str, classifier: str | None = None, tiny_dir: Path | None = None,
              chunk_length: int = 0, require_classifier: bool = True) -> ModelPack:
    """Resolve a pack by built-in name, folder or YAML file; `classifier` overrides the pack's
    (training needs only the two language models: `require_classifier=False`)."""
    if spec == "tiny":
        if tiny_dir is None:
            raise InputError("pack=tiny needs a folder to build the tiny models in")
        pack = build_tiny_pack(tiny_dir, chunk_length or 500)
    elif spec in BUILTIN:
        with resources.as_file(resources.files("vnp") / "packs" / BUILTIN[spec]) as path:
            pack = pack_from_dict(_read_yaml(path), path.parent, f"pack {spec}")
    else:
        path = Path(spec)
        yaml_path = path / "pack.yaml" if path.is_dir() else path
        if not yaml_path.exists():
            raise InputError(f"pack={spec}: not a built-in pack (500, 300, tiny), a pack folder or a YAML file")
        pack = pack_from_dict(_read_yaml(yaml_path), yaml_path.parent, str(yaml_path))
    if classifier:
        pack.classifier = str(Path(classifier).resolve())
    if not pack.classifier and require_classifier:
        raise InputError(f"pack {pack.name}: no classifier given; pass classifier=/path/to/{pack.name}_model.pth "
                         "(the published VirNucPro model) or a folder made by `vnp pack convert`")
    return pack


def model_digests(pack: ModelPack) -> dict[str, str]:
    """Each model named by its content: `sha256:<hex>` of every byte of its local files, or
    `git:<commit>` of a Hugging Face hub snapshot. Every file is checked to be a regular file
    before it is read, and only the files a model needs are read (never a whole folder tree)."""
    from vnp.models.dnabert import model_files, resolve_model_folder
    from vnp.models.esm import resolve_checkpoint

    folder = resolve_model_folder(pack.dnabert)
    commit = hub_snapshot_commit(folder)
    if commit and not Path(pack.dnabert).expanduser().exists():  # a hub id, resolved to a snapshot
        dnabert = f"git:{commit}"
    else:
        dnabert = "sha256:" + folder_digest(folder, model_files(folder), "DNABERT model file")
    esm = "sha256:" + file_digest(resolve_checkpoint(pack.esm), "ESM checkpoint")
    return {"dnabert": dnabert, "esm": esm, "classifier": _classifier_digest(pack.classifier)}


def _classifier_digest(classifier: str | None) -> str | None:
    """None for a pack without a classifier (`vnp train` embeds before there is one)."""
    from vnp.models.classifier import classifier_files

    if not classifier:
        return None
    path = Path(str(classifier))
    names = classifier_files(path)
    return "sha256:" + folder_digest(path if path.is_dir() else path.parent, names, "classifier file")


def fingerprint(pack: ModelPack, digests: dict[str, str]) -> str:
    """One digest naming the pack: its settings and its models' content digests (not their paths,
    so a pack folder can move without changing it)."""
    settings = {k: v for k, v in asdict(pack).items() if k not in ("dnabert", "esm", "classifier")}
    return hashlib.sha256(json.dumps([settings, digests], sort_keys=True).encode()).hexdigest()


def build_tiny_pack(out_dir: str | Path, chunk_length: int = 500, seed: int = 0) -> ModelPack:
    """Random models of the real architectures, offline, in seconds. Same seed, same bytes."""
    from vnp.models.classifier import build_tiny_classifier, save_classifier
    from vnp.models.dnabert import build_tiny_dnabert
    from vnp.models.esm import build_tiny_esm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    build_tiny_dnabert(out / "dnabert", seed=seed, **TINY_DNABERT)
    build_tiny_esm(out / "esm2_tiny.pt", seed=seed, **TINY_ESM)
    input_dim = TINY_DNABERT["hidden_size"] + TINY_ESM["embed_dim"]
    save_classifier(build_tiny_classifier(input_dim, seed), out / "classifier", provenance={"tiny_seed": seed})
    data = dict(name="tiny", chunk_length=chunk_length, dnabert="dnabert", esm="esm2_tiny.pt",
                esm_layer=None, classifier="classifier", dnabert_dim=TINY_DNABERT["hidden_size"],
                esm_dim=TINY_ESM["embed_dim"])
    (out / "pack.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(data)))
    return pack_from_dict(data, out, str(out / "pack.yaml"))


def convert_classifier(source: str, out_dir: str) -> Path:
    from vnp.models.classifier import load_classifier, save_classifier

    model = load_classifier(source)
    return save_classifier(model, out_dir, provenance={"converted_from": Path(source).name})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="pack_command", required=True, metavar="ACTION")
    tiny = sub.add_parser("tiny", help="build the tiny random pack (tests, demo)")
    tiny.add_argument("out_dir", metavar="DIR")
    tiny.add_argument("--chunk-length", type=int, default=500)
    tiny.add_argument("--seed", type=int, default=0)
    convert = sub.add_parser("convert", help="convert a published classifier (.pth) to safetensors + json")
    convert.add_argument("--classifier", required=True, help="the published 300_model.pth or 500_model.pth")
    convert.add_argument("-o", "--out-dir", required=True)


@exit_on_input_error
def run(args: argparse.Namespace) -> int:
    if args.pack_command == "tiny":
        if args.chunk_length <= 0:
            raise InputError(f"--chunk-length must be positive, got {args.chunk_length}")
        with torch.random.fork_rng(devices=[]):
            build_tiny_pack(args.out_dir, args.chunk_length, args.seed)
        print(f"tiny pack (random weights, labels meaningless) written to {args.out_dir}", file=sys.stderr)
    else:
        path = convert_classifier(args.classifier, args.out_dir)
        print(f"classifier converted to {path}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    from vnp.cli import module_main

    return module_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
