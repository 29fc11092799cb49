"""Typed experiment configuration: YAML files plus dotted ``--set`` overrides.

Every section is a dataclass; every field has a type, a default and a one-line doc
(``field(metadata={"doc": ...})``). Loading checks each key against the schema: an
unknown or misspelt key is a :class:`ConfigError` that names it and suggests the
closest valid key, and a value of the wrong type or outside its allowed set names
the key and what is allowed.

Numbers are checked too, for every section and every method's ``Params`` alike
(:func:`check_number`): NaN and infinity are refused everywhere; a field's bounds come
from its ``doc(..., ge=, gt=, le=, lt=)``, else from its name (:data:`NAME_BOUNDS`:
``epochs`` and ``batch_size`` >= 1, ``lr`` and ``*_lr`` > 0, ...), else a number must
not be negative (``doc(..., any_sign=True)`` lifts that). So a method's owner gets the
checks by naming keys the usual way.

YAML is read by :class:`ConfigLoader`: ``yaml.safe_load`` plus two fixes. A key given
twice in one mapping is an error (PyYAML keeps the last silently), and ``1e-3`` or
``1.0e9`` are numbers (YAML 1.1, and so PyYAML, reads them as strings).

Method hyperparameters live beside each method (its ``Params`` dataclass) and are
validated by the same code, under ``methods.<name>.<key>``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml


class ConfigError(ValueError):
    """A config key or value is wrong; the message says which and what is allowed."""


def doc(
    text: str,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    any_sign: bool = False,
    **kwargs: Any,
) -> Any:
    """A dataclass field with a default and a documentation line.

    ``ge``/``gt``/``le``/``lt`` bound a number (each item of a list of numbers);
    without them the field's name decides (:data:`NAME_BOUNDS`), else it must be >= 0;
    ``any_sign=True`` allows negative numbers."""
    meta: dict[str, Any] = {"doc": text}
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    if bounds or any_sign:
        meta["bounds"] = bounds
    return field(metadata=meta, **kwargs)


#: Bounds by key name, for fields that do not declare their own (``doc(..., ge=1)``).
#: A name ending in ``_lr`` is a learning rate and one ending in ``_seed`` a seed.
SEED_BOUNDS = {"ge": 0, "le": 2**63 - 1}
NAME_BOUNDS: dict[str, dict[str, float]] = {
    "epochs": {"ge": 1},
    "batch_size": {"ge": 1},
    "image_size": {"ge": 1},
    "threads": {"ge": 1},
    "pool_size": {"ge": 1},
    "num_tasks": {"ge": 1},
    "lr": {"gt": 0},
    "ridge": {"gt": 0},
    "temperature": {"gt": 0},
    "seed": SEED_BOUNDS,
    "seeds": SEED_BOUNDS,
}
NON_NEGATIVE = {"ge": 0}


def field_bounds(f: dataclasses.Field) -> dict[str, float]:
    """The bounds that the numbers of field ``f`` must keep (see :func:`doc`)."""
    if "bounds" in f.metadata:
        return f.metadata["bounds"]
    if f.name in NAME_BOUNDS:
        return NAME_BOUNDS[f.name]
    if f.name.endswith("_lr"):
        return NAME_BOUNDS["lr"]
    if f.name.endswith("_seed"):
        return SEED_BOUNDS
    return NON_NEGATIVE


_BOUND_TEXT = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def bounds_text(bounds: dict[str, float]) -> str:
    return " and ".join(f"{_BOUND_TEXT[k]} {v}" for k, v in bounds.items())


def check_number(value: Any, bounds: dict[str, float], key: str) -> None:
    """Refuse NaN, infinity, and a number outside ``bounds`` (recursing into lists)."""
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_number(v, bounds, f"{key}[{i}]")
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}: {value} is not a finite number")
    ok = {
        "ge": lambda b: value >= b, "gt": lambda b: value > b, "le": lambda b: value <= b, "lt": lambda b: value < b,
    }
    for kind, bound in bounds.items():
        if not ok[kind](bound):
            raise ConfigError(f"{key}: {value} is out of range; it must be {bounds_text(bounds)}")


# ----------------------------------------------------------------------------- schema


@dataclass
class DataConfig:
    source: str = doc("data source name (see `retaincl list`)", default="mnist5k")
    root: str | None = doc("folder holding downloaded data (cifar100, image_folder)", default=None)
    image_size: int = doc("side in pixels that folder images are resized to on load", default=224)
    download: bool = doc("let torchvision sources download when online", default=False)
    class_names: str | None = doc(
        "JSON file {folder: class name} for folder sources (default: root/class_names.json if present)",
        default=None,
    )
    skip_bad_images: bool = doc(
        "image folders: leave out files that cannot be read as images (each is decoded once "
        "on load and listed in the results) instead of stopping with an error naming the first",
        default=False,
    )
    train_per_class: int | None = doc(
        "a subset: keep the first n training images of each class (of each class and domain for "
        "domain sources), in the source's order, the same for every seed; null = all",
        default=None, ge=1,
    )
    test_per_class: int | None = doc(
        "a subset: keep the first n test images of each class (and domain), as train_per_class; null = all",
        default=None, ge=1,
    )


@dataclass
class ScenarioConfig:
    kind: Literal["class", "domain", "task"] = doc(
        "class-, domain- or task-incremental", default="class"
    )
    base: int = doc("classes in the first task (B in B{base}-Inc{step})", default=2, ge=1)
    increment: int = doc("classes in each later task (Inc in B{base}-Inc{step})", default=2, ge=1)
    class_order: list[int] | None = doc(
        "explicit class order; null = sorted when order_seed is null, else shuffled", default=None
    )
    order_seed: int | None = doc(
        "seed that shuffles the class order (1993 is the field's usual one); null keeps 0..C-1",
        default=None,
    )
    domains: Literal["permuted", "rotated", "source"] = doc(
        "domain-incremental shift: pixel permutations, rotations, or the source's domain labels",
        default="permuted",
    )
    num_tasks: int = doc("number of domains for permuted/rotated streams", default=5)
    domain_seed: int = doc("seed of the permutations/rotation angles", default=0)
    max_rotation: float = doc(
        "rotated streams: task t is rotated by t/(T-1)*max_rotation degrees", default=180.0, any_sign=True
    )


@dataclass
class BackboneConfig:
    name: str = doc("backbone: a registered name or any timm model name", default="efficientnet_lite0")
    checkpoint: str | None = doc("local weights (.safetensors, or a state dict .pt/.pth)", default=None)
    pretrained: bool = doc("load pre-trained weights (packaged, hub or checkpoint)", default=True)
    image_size: int = doc("input side in pixels (bilinear resize)", default=64)


@dataclass
class TransformConfig:
    """Input transforms (``retaincl.data.transforms``): test geometry, normalisation, augmentation."""

    resize: int | None = doc(
        "test: resize the shorter side to this, then centre-crop backbone.image_size "
        "(official ViT pipelines: 256 then 224); null = resize straight to backbone.image_size",
        default=None,
    )
    interpolation: Literal["bilinear", "bicubic"] = doc(
        "resampling of every resize and crop (official ViT pipelines: bicubic)", default="bilinear"
    )
    normalize: Literal["backbone", "none", "imagenet", "inception"] = doc(
        "input normalisation: the backbone's mean/std, none ([0, 1] inputs: official APER/RanPAC), "
        "ImageNet's, or 0.5/0.5",
        default="backbone",
    )
    train_crop: Literal["none", "random_resized"] = doc(
        "training augmentation of end-to-end methods: a random resized crop to backbone.image_size",
        default="none",
    )
    train_crop_scale: list[float] = doc(
        "area range of the random resized crop (torchvision's default 0.08..1)", default_factory=lambda: [0.08, 1.0]
    )
    train_crop_ratio: list[float] = doc(
        "aspect-ratio range of the random resized crop", default_factory=lambda: [0.75, 4 / 3]
    )
    train_hflip: bool = doc("training augmentation: horizontal flip with probability 0.5", default=False)

    def validate(self) -> None:
        if self.resize is not None and self.resize < 1:
            raise ConfigError(f"transform.resize must be >= 1 or null, got {self.resize}")
        lo_hi = self.train_crop_scale
        if len(lo_hi) != 2 or not 0 < lo_hi[0] <= lo_hi[1] <= 1:
            raise ConfigError(f"transform.train_crop_scale must be [min, max] with 0 < min <= max <= 1, got {lo_hi}")
        r = self.train_crop_ratio
        if len(r) != 2 or not 0 < r[0] <= r[1]:
            raise ConfigError(f"transform.train_crop_ratio must be [min, max] with 0 < min <= max, got {r}")


@dataclass
class CacheConfig:
    enabled: bool = doc("reuse frozen-backbone features across runs", default=True)
    dir: str = doc("folder of the feature cache", default="~/.cache/retaincl/features")


@dataclass
class LoaderConfig:
    """How images reach the device (``retaincl.data.loader``); changes no number."""

    workers: int | None = doc(
        "processes that decode image files (folder sources) in parallel; null = the cores available "
        "minus one, at most 8; 0 = decode in the main process",
        default=None,
    )
    decode_once: bool = doc(
        "folder sources: decode every image once into memory (N x 3 x S x S bytes) when a method first "
        "reads images by index (end-to-end training, their evaluation), instead of at every epoch",
        default=True,
    )


@dataclass
class EvalConfig:
    batch_size: int = doc("batch size for feature extraction and evaluation", default=256)


@dataclass
class WandbConfig:
    """Weights & Biases (``pip install "retaincl[wandb]"``); on when ``log.wandb`` is a mapping."""

    project: str = doc("W&B project", default="retaincl")
    entity: str | None = doc("W&B entity (user or team); null = your default", default=None)
    mode: Literal["offline", "online"] = doc(
        "offline writes the run under the run folder (upload later with `wandb sync`); online streams it",
        default="offline",
    )
    group: str | None = doc("W&B group; null = the run name, so the methods of one stream group together", default=None)
    tags: list[str] = doc("W&B tags", default_factory=list)


@dataclass
class LogConfig:
    """Where a run's metrics go besides ``results.json``: ``metrics.csv``, ``metrics.jsonl``
    and ``run.log`` are always written in the run folder; these add the trackers."""

    tensorboard: bool = doc(
        "TensorBoard event files in <run folder>/tensorboard (`pip install \"retaincl[tensorboard]\"`)", default=False
    )
    wandb: WandbConfig | None = doc(
        "Weights & Biases: null = off; a mapping turns it on, e.g. {project: mine, mode: offline} ({} = defaults)",
        default=None,
    )


@dataclass
class ExperimentConfig:
    method: str | list[str] = doc(
        "method name, or a list of names run in turn on the same stream", default="simplecil"
    )
    methods: dict[str, dict[str, Any]] = doc(
        "per-method hyperparameters, methods.<name>.<key> (see each method's docs)",
        default_factory=dict,
    )
    seed: int = doc("seed of weights, sampling and data order; recorded in results", default=1993)
    seeds: list[int] | None = doc(
        "a sweep: run every method once per seed in this list (each seed its own run folder); "
        "null = the one `seed`. `retaincl run --seeds 0,1,2` sets it",
        default=None,
    )
    device: str = doc("cpu, cuda, cuda:N or auto", default="auto")
    output_dir: str = doc("folder for results, checkpoints and logs", default="runs")
    name: str | None = doc("run name; default derived from data, scenario and seed", default=None)
    quiet: bool = doc("no progress bars", default=False)
    threads: int | None = doc(
        "CPU threads for torch; null = torch's default (1 is faster when other jobs share the cores)",
        default=None,
    )
    data: DataConfig = doc("data source", default_factory=DataConfig)
    scenario: ScenarioConfig = doc("how the source becomes a stream of tasks", default_factory=ScenarioConfig)
    backbone: BackboneConfig = doc("pre-trained encoder", default_factory=BackboneConfig)
    transform: TransformConfig = doc("input transforms: test resize/crop, normalisation, augmentation", default_factory=TransformConfig)
    cache: CacheConfig = doc("feature cache", default_factory=CacheConfig)
    eval: EvalConfig = doc("evaluation", default_factory=EvalConfig)
    precision: Literal["fp32", "bf16"] = doc(
        "fp32, or bf16 autocast for the backbone's feature extraction and for end-to-end methods' training "
        "and prediction (float64 statistics are never cast)",
        default="fp32",
    )
    loader: LoaderConfig = doc("data pipeline: decoding workers, decode once", default_factory=LoaderConfig)
    log: LogConfig = doc("metric logs and trackers (TensorBoard, Weights & Biases)", default_factory=LogConfig)

    @property
    def method_names(self) -> list[str]:
        return [self.method] if isinstance(self.method, str) else list(self.method)

    def validate(self) -> None:
        names = self.method_names
        if not names:
            raise ConfigError("method: the list is empty; name at least one method (see `retaincl list`)")
        for name in names:
            if names.count(name) > 1:
                raise ConfigError(f"method: {name!r} is listed twice; each method runs once per config")
        if self.seeds is not None:
            if not self.seeds:
                raise ConfigError("seeds: the list is empty; give at least one seed, or null to use `seed`")
            repeated = sorted({s for s in self.seeds if self.seeds.count(s) > 1})
            if repeated:
                raise ConfigError(f"seeds: {repeated[0]} is listed twice; each seed runs once")


# ----------------------------------------------------------------------------- parsing


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if origin is not None:
        inner = ", ".join(_type_name(a) for a in typing.get_args(tp))
        return f"{origin.__name__}[{inner}]" if inner else origin.__name__
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against type ``tp``; return it converted where lossless."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        errors = []
        for arg in args:
            try:
                return _coerce(value, arg, key)
            except ConfigError as err:
                errors.append(err)
                if isinstance(value, dict) and dataclasses.is_dataclass(arg):
                    raise  # a mapping for a section: its own error names the wrong key
        raise ConfigError(f"{key}: {value!r} is not allowed; expected {_type_name(tp)}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}: expected null, got {value!r}")
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{key}: {value!r} is not allowed; choose one of {', '.join(map(repr, args))}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} keys, got {value!r}")
        return build(tp, value, prefix=key)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp,) = args or (Any,)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:
                raise ConfigError(f"{key}: {value} is too large for a number") from None
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {tp!r}")


def unknown_key_error(key: str, valid: list[str], prefix: str) -> ConfigError:
    full = f"{prefix}.{key}" if prefix else key
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f" Did you mean {(prefix + '.' if prefix else '') + close[0]!r}?" if close else ""
    return ConfigError(f"unknown config key {full!r}.{hint} Valid keys here: {', '.join(sorted(valid))}")


def build(cls: type, values: dict[str, Any] | None, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, validating every key and value."""
    values = dict(values or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in values:
        if key not in fields:
            raise unknown_key_error(str(key), list(fields), prefix)
    kwargs = {}
    for name, value in values.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(value, hints[name], key)
        check_number(kwargs[name], field_bounds(fields[name]), key)
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)
    if check is not None:
        check()
    return obj


def to_dict(obj: Any) -> Any:
    """Plain-data form of a config (for results files and hashing)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


class ConfigLoader(yaml.SafeLoader):
    """``yaml.safe_load``'s loader, with duplicate keys refused and exponents read as numbers."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # keys merged in with << may be overridden; only own keys must be unique
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark)
            except TypeError:
                continue  # an unhashable key: the base class reports it
            if first is not key_node.start_mark:
                raise yaml.constructor.ConstructorError(
                    None, None,
                    f"the key {key!r} appears twice in one mapping (first on line {first.line + 1}); keep one",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


# YAML 1.1 wants a dot and a signed exponent (1.0e+9); 1e-3, 1.0e9 and 1E3 are numbers too.
ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def yaml_error_line(err: yaml.YAMLError) -> str:
    """One line from a PyYAML error: the problem and where it is."""
    if isinstance(err, yaml.MarkedYAMLError):
        mark = err.problem_mark or err.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        return f"{err.problem or err.context}{where}"
    return " ".join(str(err).split())


def load_yaml_text(text: str) -> Any:
    """Parse YAML text with :class:`ConfigLoader` (safe: no Python objects)."""
    return yaml.load(text, Loader=ConfigLoader)  # noqa: S506 - a SafeLoader subclass


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (["a", "b"], value parsed as YAML, so 3 is int and [1,2] a list)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. --set scenario.increment=10")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {text!r}: the key is empty")
    try:
        value = load_yaml_text(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML ({yaml_error_line(err)})") from err
    return key.split("."), value


def apply_override(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {'.'.join(path)}: {part!r} holds a value, not a section")
        node = child
    node[path[-1]] = value


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = load_yaml_text(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {yaml_error_line(err)}") from err
    except (UnicodeDecodeError, OSError) as err:
        raise ConfigError(f"config file {str(path)!r} cannot be read as text ({err})") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level")
    return data


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None
) -> ExperimentConfig:
    """Read a YAML config (or the defaults), apply ``key=value`` overrides, validate."""
    tree = read_yaml(path) if path is not None else {}
    for text in overrides or []:
        keys, value = parse_override(text)
        apply_override(tree, keys, value)
    return config_from_dict(tree)


def config_from_dict(tree: dict[str, Any]) -> ExperimentConfig:
    cfg = build(ExperimentConfig, tree)
    from retaincl.registry import METHODS

    for name in cfg.method_names:
        METHODS.get(name)  # unknown method -> KeyError naming the close match
    for name, params in cfg.methods.items():
        if name not in METHODS:
            raise unknown_key_error(name, METHODS.names(), "methods")
        if not isinstance(params, dict):
            raise ConfigError(f"methods.{name}: expected a mapping of hyperparameters")
        method_params(name, params)  # validate now, not halfway through a run
    return cfg


def method_params(name: str, values: dict[str, Any] | None) -> Any:
    """The validated ``Params`` dataclass of method ``name``."""
    from retaincl.registry import METHODS

    cls = METHODS.get(name)
    return build(cls.Params, values or {}, prefix=f"methods.{name}")


def _numeric(tp: Any) -> bool:
    if tp in (int, float):
        return True
    return any(_numeric(a) for a in typing.get_args(tp))


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """(key, type, default, doc) rows of a schema, nested sections flattened."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows.extend(describe(tp, key + "."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        )
        text = f.metadata.get("doc", "")
        bounds = field_bounds(f) if _numeric(tp) else {}
        rows.append((key, _type_name(tp), default, f"{text} [{bounds_text(bounds)}]" if bounds else text))
    return rows
