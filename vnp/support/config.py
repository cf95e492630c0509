"""Configuration of `vnp predict`: typed defaults <- YAML file <- command-line `key=value`.

Each field carries a one-line help (shown by `vnp predict --help`); invalid values fail at start
with a message that names the key.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Optional

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vnp.support.errors import InputError
from vnp.support.paths import regular_file


MIN_CHUNK_LENGTH = 3  # the smallest useful chunk holds one codon


def _help(text: str, default: Any) -> Any:  # a config field with its one-line help
    return field(default=default, metadata={"help": text})


@dataclass
class BatchConfig:
    unit_chunks: int = _help(
        "chunks per work unit: the unit of sharding, batching and progress. Changes the batch "
        "composition, so it is part of the run record (a resume keeps the recorded one). 0 = 128 on CPU; "
        "on GPU enough chunks for 16 full ESM batches", 0)
    dnabert_tokens: int = _help("token budget of one DNABERT-S batch (padded tokens); 0 = 2048 on CPU, on GPU "
                                "sized to the free memory (2048-65536)", 0)
    esm_tokens: int = _help("token budget of one ESM2 batch (padded tokens); 0 = 2048 on CPU, on GPU sized to "
                            "the free memory (2048-65536)", 0)

    def __post_init__(self) -> None:
        if self.unit_chunks < 0:
            raise ValueError(f"batch.unit_chunks must be positive (or 0 for the default), got {self.unit_chunks}")
        for name in ("dnabert_tokens", "esm_tokens"):
            if getattr(self, name) < 0:
                raise ValueError(f"batch.{name} must be positive (or 0 for the default), got {getattr(self, name)}")


@dataclass
class DistConfig:
    timeout_s: float = _help(
        "seconds any rank waits at a collective before the job fails instead of hanging", 1800.0)
    backend: str = _help("auto (nccl on CUDA, gloo on CPU), nccl or gloo", "auto")

    def __post_init__(self) -> None:
        if not math.isfinite(self.timeout_s) or self.timeout_s <= 0:  # inf would wait forever
            raise ValueError(f"dist.timeout_s must be a positive number of seconds, got {self.timeout_s}")
        if self.backend not in ("auto", "nccl", "gloo"):
            raise ValueError(f"dist.backend must be auto, nccl or gloo, got {self.backend!r}")


@dataclass
class ModelsConfig:
    timeout_s: float = _help("seconds a model server (the hub, a mirror) may stay silent before loading a model "
                             "that is not on disk fails", 60.0)
    dir: str = _help("a folder of fetched packs (`vnp models fetch`): pack=500 is taken from DIR/500/pack.yaml "
                     "when it exists; empty = $VNP_MODELS", "")

    def __post_init__(self) -> None:
        if not math.isfinite(self.timeout_s) or self.timeout_s <= 0:
            raise ValueError(f"models.timeout_s must be a positive number of seconds, got {self.timeout_s}")


@dataclass
class EngineConfig:
    balance: bool = _help("deal work units to the ranks in estimated-cost order (a stop-codon scan pre-pass) so each "
                          "step costs about the same on every rank; false: input order", True)
    prefetch: int = _help("work units prepared ahead on a helper thread while the device computes (0: none)", 1)
    window: int = _help("steps whose exchange may be in flight before a rank waits (1: wait every step)", 4)
    commit_every_s: float = _help("rank 0 commits progress at least this often (seconds), in the background", 30.0)
    commit_every_steps: int = _help("rank 0 also commits at least every this many steps (O(100) parts for "
                                    "10,000 steps)", 64)

    def __post_init__(self) -> None:
        for name in ("prefetch", "window", "commit_every_steps"):
            low = 0 if name == "prefetch" else 1
            if getattr(self, name) < low:
                raise ValueError(f"engine.{name} must be >= {low}, got {getattr(self, name)}")
        if self.commit_every_s <= 0:
            raise ValueError(f"engine.commit_every_s must be positive, got {self.commit_every_s}")


@dataclass
class FilterConfig:
    min_length: int = _help("sequences shorter than this (bp) are not translated or embedded; contigs.tsv lists "
                            "them as filtered. Part of the run record", 0)
    max_n_fraction: float = _help("sequences whose share of N bases is above this are not translated or embedded "
                                  "(1 keeps all). Part of the run record", 1.0)

    def __post_init__(self) -> None:
        if self.min_length < 0:
            raise ValueError(f"filter.min_length must be >= 0, got {self.min_length}")
        if not 0.0 <= self.max_n_fraction <= 1.0:
            raise ValueError(f"filter.max_n_fraction must be between 0 and 1, got {self.max_n_fraction}")


@dataclass
class CallConfig:
    min_score: float = _help("a chunk is viral when its max virus score is >= its max other score and >= this "
                             "(0: the original's rule)", 0.0)
    min_fraction: float = _help("a sequence is viral when this share of its chunks with frames is viral", 0.5)
    high_margin: float = _help("confidence high: mean margin of the supporting chunks >= this (and enough chunks)",
                               0.5)
    high_chunks: int = _help("confidence high: at least this many chunks support the call", 2)
    medium_margin: float = _help("confidence medium: mean margin of the supporting chunks >= this", 0.2)
    max_fdr: float = _help("with a calibration: call virus the largest set of sequences (by virus probability) whose "
                           "estimated false discovery rate is <= this, instead of the call.min_fraction rule (0: off)",
                           0.0)
    prior: float = _help("with a calibration: the expected share of viral sequences (and chunks) in this sample; "
                         "probabilities are shifted from the calibration set's share by the odds ratio (0: keep the "
                         "calibration set's share)", 0.0)
    preset: str = _help("relaxed, default or conservative: sets every call.* and regions.* key to the preset's "
                        "values (README table); keys given with it override the preset. In vnp call, "
                        "call.preset=default returns every call.*/regions.* key to its default", "default")

    def __post_init__(self) -> None:
        for name in ("min_score", "high_margin", "medium_margin"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"call.{name} must be between 0 and 1, got {getattr(self, name)}")
        if not 0.0 < self.min_fraction <= 1.0:
            raise ValueError(f"call.min_fraction must be above 0 and at most 1, got {self.min_fraction}")
        if self.high_chunks < 1:
            raise ValueError(f"call.high_chunks must be >= 1, got {self.high_chunks}")
        if self.medium_margin > self.high_margin:
            raise ValueError(f"call.medium_margin ({self.medium_margin}) must not exceed call.high_margin "
                             f"({self.high_margin})")
        if not 0.0 <= self.max_fdr < 1.0:
            raise ValueError(f"call.max_fdr must be >= 0 and below 1 (0: off), got {self.max_fdr}")
        if not 0.0 <= self.prior < 1.0:
            raise ValueError(f"call.prior must be >= 0 and below 1 (0: off), got {self.prior}")
        if self.preset not in PRESETS:
            raise ValueError(f"call.preset must be relaxed, default or conservative, got {self.preset!r}")


@dataclass
class RegionsConfig:
    switch_penalty: float = _help("log-odds cost of switching between viral and non-viral in the segmentation: "
                                  "higher gives fewer, longer regions", 3.0)
    min_length: int = _help("viral regions shorter than this (bp) are dropped (after merging)", 0)
    merge_gap: int = _help("viral regions of a sequence separated by at most this many bp are merged", 0)

    def __post_init__(self) -> None:
        if not self.switch_penalty >= 0.0 or self.switch_penalty == float("inf"):
            raise ValueError(f"regions.switch_penalty must be a finite number >= 0, got {self.switch_penalty}")
        for name in ("min_length", "merge_gap"):
            if getattr(self, name) < 0:
                raise ValueError(f"regions.{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class TablesConfig:
    highestscore_scores: bool = _help("add max_score_0 and max_score_1 to prediction_results_highestscore.csv "
                                      "(as the Broad pipeline expects); off keeps the original's table", False)
    fasta_width: int = _help("letters per line in viral_sequences.fna and viral_regions.fna", 60)

    def __post_init__(self) -> None:
        if self.fasta_width < 1:
            raise ValueError(f"tables.fasta_width must be positive, got {self.fasta_width}")


@dataclass
class ModelRunConfig:
    """The keys of every command that runs the language models through the unit engine
    (`vnp predict`, `vnp train`): one definition, one validation."""

    pack: str = _help("model pack: 500, 300, tiny (built on the fly) or a pack folder / YAML file", "500")
    chunk_length: int = _help("chunk length in bp; 0 takes the pack's (300 or 500 for the published models)", 0)
    device: str = _help("auto (cuda:LOCAL_RANK when CUDA is available, else cpu), cpu or cuda", "auto")
    precision: str = _help("auto (bf16 on GPUs of compute capability 8.0 and later, fp16 on older ones, fp32 on "
                           "CPU), fp32, bf16 or fp16", "auto")
    threads: int = _help("CPU threads per rank; 0 = the cores of this node divided by its local ranks", 0)
    esm_attention: str = _help("sdpa (fast path) or fair-esm (fair-esm's own forward, the reference)", "sdpa")
    force: bool = _help("start afresh even if the output folder holds a run with other inputs, models or "
                        "settings", False)
    progress: bool = _help("show a progress bar on rank 0", True)
    offline: bool = _help("never open a network connection for models (as HF_HUB_OFFLINE=1): a model not on "
                          "disk is an error naming it", False)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)

    def __post_init__(self) -> None:
        if self.chunk_length < 0 or 0 < self.chunk_length < MIN_CHUNK_LENGTH:
            raise ValueError(f"chunk_length must be at least {MIN_CHUNK_LENGTH} (one codon), or 0 for the pack's, "
                             f"got {self.chunk_length}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {self.precision!r}")
        if not 0 <= self.threads <= MAX_THREADS:  # the machine's own bound is checked where it runs
            raise ValueError(f"threads must be 0 (automatic) or 1..{MAX_THREADS}, got {self.threads}")
        if self.esm_attention not in ("sdpa", "fair-esm"):
            raise ValueError(f"esm_attention must be sdpa or fair-esm, got {self.esm_attention!r}")


@dataclass
class PredictConfig(ModelRunConfig):
    classifier: str = _help("the published classifier (300_model.pth / 500_model.pth) or a vnp classifier "
                            "folder; overrides the pack's", "")
    save_embeddings: bool = _help("also store every frame's 3328-d embedding in OUT/embeddings/", False)
    resume: bool = _help("continue an interrupted run in OUT (a rerun of the same command also resumes)", True)
    filter: FilterConfig = field(default_factory=FilterConfig)
    call: CallConfig = field(default_factory=CallConfig)
    regions: RegionsConfig = field(default_factory=RegionsConfig)
    tables: TablesConfig = field(default_factory=TablesConfig)
    calibration: Optional[str] = _help("a calibration.json written by vnp calibrate: adds virus_probability to "
                                       "chunks.tsv and contigs.tsv and fdr to contigs.tsv; empty (calibration=): "
                                       "none", None)

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.call.max_fdr or self.call.prior) and not self.calibration:
            key = "call.max_fdr" if self.call.max_fdr else "call.prior"
            raise ValueError(f"{key} needs calibration=calibration.json (from vnp calibrate): without one vnp has "
                             "no probabilities")


# call.preset: the call.* and regions.* values each preset sets (every other call.* and regions.*
# key goes to its default). `default` is the original's rule: the tables of today.
PRESETS = {
    "relaxed": {"call.min_fraction": 0.3, "regions.switch_penalty": 2.0, "regions.merge_gap": 1000},
    "default": {},
    "conservative": {"call.min_score": 0.9, "call.min_fraction": 0.7, "call.high_chunks": 3,
                     "regions.switch_penalty": 6.0, "regions.min_length": 1000},
}


# A config may be written on one machine and read on another (`vnp call`, `vnp report`), so it
# bounds `threads` only for sanity; `vnp.run.dist.set_cpu_threads` refuses more than the rank's cores.
MAX_THREADS = 1024


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


MAX_YAML_BYTES = 1 << 20


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader (no tags beyond YAML's own) that refuses a key given twice in a mapping,
    and reads `1e-3` as a number, as YAML 1.2 does (1.1 wants `1.0e-3`)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value in seen:
                raise yaml.constructor.ConstructorError("while constructing a mapping", node.start_mark,
                                                        f"found duplicate key {key_node.value}", key_node.start_mark)
            seen.add(getattr(key_node, "value", None))
        return super().construct_mapping(node, deep=deep)


_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def read_yaml_mapping(path: str | os.PathLike, what: str) -> dict:
    """A small YAML file holding a mapping, read safely: a regular file of at most 1 MiB, no
    aliases (an alias bomb expands exponentially), no tags beyond YAML's own (no
    `!!python/object`), no duplicate keys. Anything else is one line naming the file and line."""
    path = regular_file(path, what)
    if path.stat().st_size > MAX_YAML_BYTES:
        raise InputError(f"{path}: {what} is larger than {MAX_YAML_BYTES >> 20} MiB")
    try:
        text = path.read_bytes().decode("utf-8-sig")
        for event in yaml.parse(text):
            if isinstance(event, yaml.AliasEvent):
                raise InputError(f"{path}: line {event.start_mark.line + 1}: YAML aliases (*name) are not allowed "
                                 f"in a {what}")
        data = yaml.load(text, Loader=_StrictLoader)
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: {what} is not UTF-8 text (byte {err.start})") from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1}: " if mark else ""
        raise InputError(f"{path}: {where}invalid YAML in {what} ({err.problem or err.context})") from None
    except yaml.YAMLError as err:
        raise InputError(f"{path}: invalid YAML in {what} ({str(err).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"{path}: a {what} must be a mapping of keys, not a {type(data).__name__}")
    return data


def load_config(yaml_path: str | None, overrides: list[str], cls: type = PredictConfig):
    """Defaults <- YAML <- `key=value` overrides, validated; InputError names the bad key.
    `cls` is the command's config class (PredictConfig, or TrainConfig for `vnp train`)."""
    try:
        merged = OmegaConf.structured(cls)
        with_calls = "call" in {f.name for f in dataclasses.fields(cls)}
        layers = [OmegaConf.create(read_yaml_mapping(yaml_path, "config file"))] if yaml_path else []
        layers.append(OmegaConf.from_dotlist(overrides))
        for layer in layers:  # a preset goes under the keys given beside it, so they override it
            preset = OmegaConf.select(layer, "call.preset", default=None) if with_calls else None
            merged = OmegaConf.merge(merged, preset_values(preset), layer) if preset else OmegaConf.merge(merged, layer)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        reason = str(err).splitlines()[0]
        raise InputError(f"config: {'key ' + repr(key) + ': ' if key else ''}{reason}") from None
    except ValueError as err:
        raise InputError(f"config: {err}") from None


def preset_values(name: str):
    """Every call.* and regions.* key as call.preset=`name` sets it: the preset's values, the
    defaults elsewhere (so a preset also undoes earlier settings)."""
    if name not in PRESETS:
        raise ValueError(f"call.preset must be relaxed, default or conservative, got {name!r}")
    values = {"call": {**asdict(CallConfig()), "preset": name}, "regions": asdict(RegionsConfig())}
    for key, value in PRESETS[name].items():
        section, field_name = key.split(".")
        values[section][field_name] = value
    return OmegaConf.create(values)


def to_yaml(config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def iter_help(cls: type = PredictConfig, prefix: str = "") -> Iterator[tuple[str, Any, str]]:
    """(dotted key, default, help) of every field, nested sections flattened."""
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata:  # a nested section: its class is what its factory builds
            yield from iter_help(type(f.default_factory()), prefix + f.name + ".")
            continue
        yield prefix + f.name, f.default, f.metadata["help"]


def help_text(cls: type = PredictConfig) -> str:
    lines = ["configuration keys (key=value on the command line, or in a YAML file given with -c):"]
    for key, default, text in iter_help(cls):
        shown = str(default).lower() if isinstance(default, bool) else default
        lines.append(f"  {key} (default: {shown})\n      {text}")
    return "\n".join(lines)
