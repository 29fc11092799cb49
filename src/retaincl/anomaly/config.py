"""The typed config of ``retaincl anomaly``: which protocol, on what input, which models.

Built with :func:`retaincl.config.build`, so an unknown or misspelt key is an error that
names it and suggests the closest key, as for ``retaincl run``. The data, scenario,
backbone, cache and eval sections are the same dataclasses ``retaincl run`` uses.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from retaincl.config import (
    BackboneConfig,
    CacheConfig,
    ConfigError,
    DataConfig,
    EvalConfig,
    ScenarioConfig,
    apply_override,
    build,
    doc,
    parse_override,
    read_yaml,
    to_dict,
    unknown_key_error,
)

Variant = Literal[
    "memae", "memae_no_shrink", "memae_no_entropy", "memae_nonsparse", "ae", "pca", "class_mean"
]
VARIANT_NAMES: tuple[str, ...] = typing.get_args(Variant)
NEURAL_VARIANTS = ("memae", "memae_no_shrink", "memae_no_entropy", "memae_nonsparse", "ae")
# what each variant switches off (Sec. 4.4 ablations): (memory on, shrinkage on, entropy loss on)
VARIANT_PARTS = {
    "memae": (True, True, True),
    "memae_no_shrink": (True, False, True),
    "memae_no_entropy": (True, True, False),
    "memae_nonsparse": (True, False, False),
    "ae": (False, False, False),
}


@dataclass
class ModelConfig:
    memory_size: int = doc("N, the number of memory items (Sec. 4.1: 100 for MNIST, 500 for CIFAR-10)", default=100)
    shrink_threshold: float | None = doc(
        "lambda of the hard shrinkage (eq. 7); null = 1/N. The paper: 'a value in [1/N, 3/N]' (Sec. 3.3.2); "
        "the official code: 0.0025 for N = 2000 (5/N); 0 turns shrinkage off",
        default=None,
    )
    entropy_weight: float = doc("alpha, weight of the addressing entropy in the loss (eq. 10; 0.0002 in paper and code)", default=0.0002)
    similarity: Literal["dot", "cosine"] = doc(
        "d(z, m) in eq. 4: dot (the official code, F.linear) or cosine (the paper's eq. 5)", default="dot"
    )
    temperature: float = doc("softmax temperature: w = softmax(d(z, m) / temperature); 1 = paper and code", default=1.0)
    layout: Literal["position", "whole"] = doc(
        "images: the memory addresses each spatial position's C-dim feature (official MemModule) "
        "or the whole flattened encoding as one query (Fig. 2 offers both)",
        default="position",
    )
    channels: list[int] = doc("images: output channels of the stride-2 encoder convolutions (MNIST: 16, 32, 64)", default_factory=lambda: [16, 32, 64])
    kernels: list[int] | None = doc(
        "images: kernel size of each encoder convolution (MNIST: 1, 3, 3 = Conv2(1,2,16)-Conv2(3,2,32)-Conv2(3,2,64)); null = all 3",
        default_factory=lambda: [1, 3, 3],
    )
    input_range: Literal["signed", "unit"] = doc(
        "images: signed = pixels scaled to [-1, 1] (the official Normalize(0.5, 0.5)); unit = [0, 1]", default="signed"
    )
    hidden: list[int] = doc("features: widths of the MLP encoder's hidden layers", default_factory=lambda: [256])
    code_dim: int = doc("features: dimension of the encoding (and of each memory item)", default=64)

    def validate(self) -> None:
        if self.memory_size < 1:
            raise ConfigError("model.memory_size must be at least 1 (use models: [ae] for no memory)")
        if self.shrink_threshold is not None and not 0 <= self.shrink_threshold < 1:
            raise ConfigError("model.shrink_threshold must be in [0, 1); the paper uses 1/N to 3/N")
        if self.entropy_weight < 0:
            raise ConfigError("model.entropy_weight must be >= 0")
        if self.temperature <= 0:
            raise ConfigError("model.temperature must be > 0")
        if not self.channels or min(self.channels) < 1:
            raise ConfigError("model.channels needs at least one layer, every width >= 1")
        if self.kernels is not None and (len(self.kernels) != len(self.channels) or min(self.kernels) < 1):
            raise ConfigError(
                f"model.kernels {self.kernels} needs one kernel size >= 1 per layer of model.channels {self.channels}"
            )
        if self.code_dim < 1 or any(h < 1 for h in self.hidden):
            raise ConfigError("model.code_dim and every model.hidden width must be >= 1")

    def threshold(self) -> float:
        """lambda as configured (null = 1/N)."""
        return 1.0 / self.memory_size if self.shrink_threshold is None else self.shrink_threshold


@dataclass
class TrainConfig:
    epochs: int = doc("passes over the normal training data (official code: 100, training_options.py)", default=100)
    batch_size: int = doc("training batch size (official train_video_MemAE.sh: 10)", default=10)
    lr: float = doc("Adam learning rate (official training_options.py: 1e-4)", default=0.0001)
    weight_decay: float = doc("Adam weight decay (official: none)", default=0.0)

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 2 or self.lr <= 0:
            raise ConfigError("train.epochs must be >= 1, train.batch_size >= 2 (batch norm) and train.lr > 0")


@dataclass
class BaselineConfig:
    pca_components: int = doc("pca: principal components kept (score = squared reconstruction error)", default=5)

    def validate(self) -> None:
        if self.pca_components < 1:
            raise ConfigError("baselines.pca_components must be >= 1")


GRID_SECTIONS = {"model": ModelConfig, "train": TrainConfig, "baselines": BaselineConfig}


@dataclass
class SelectionConfig:
    grid: dict[str, dict[str, list[Any]]] = doc(
        "one_class model selection without test data: variant -> {config key: candidate values}, e.g. "
        "{memae: {model.layout: [position, whole], model.shrink_threshold: [0.01, 0.03]}}; every "
        "combination is scored on the validation split below and the best mean validation AUC over "
        "the normal classes is kept for all of them; a variant not named keeps the config as is",
        default_factory=dict,
    )
    holdout: float = doc(
        "fraction of each normal class's training images held out as validation normals", default=0.25
    )
    anomalies_per_class: int | None = doc(
        "validation anomalies: this many training images of every other class (null: all); the test "
        "split is never read during selection",
        default=100,
    )
    refit: bool = doc("after selection, train the chosen setting on all training images of the class", default=True)

    def validate(self) -> None:
        if not 0 < self.holdout < 1:
            raise ConfigError("selection.holdout must be in (0, 1)")
        if self.anomalies_per_class is not None and self.anomalies_per_class < 1:
            raise ConfigError("selection.anomalies_per_class must be >= 1 or null")
        for variant, grid in self.grid.items():
            if variant not in VARIANT_NAMES:
                raise ConfigError(f"selection.grid: unknown variant {variant!r}; choose from {', '.join(VARIANT_NAMES)}")
            if not isinstance(grid, dict) or not grid:
                raise ConfigError(f"selection.grid.{variant}: expected a mapping of config key -> list of values")
            for key, values in grid.items():
                check_grid_key(f"selection.grid.{variant}", key)
                if not isinstance(values, list) or not values:
                    raise ConfigError(f"selection.grid.{variant}.{key}: expected a non-empty list of values")


def check_grid_key(where: str, key: str) -> None:
    """A grid key must be ``model.X``, ``train.X`` or ``baselines.X`` of a known field."""
    section, _, name = str(key).partition(".")
    cls = GRID_SECTIONS.get(section)
    if cls is None or name not in {f.name for f in dataclasses.fields(cls)}:
        valid = [f"{s}.{f.name}" for s, c in GRID_SECTIONS.items() for f in dataclasses.fields(c)]
        raise unknown_key_error(str(key), valid, where)


@dataclass
class StreamConfig:
    update: Literal["joint", "finetune"] = doc(
        "after each task: 'joint' trains on the training data of every task seen so far, "
        "'finetune' on the new task's only; both start from the previous task's model",
        default="joint",
    )
    classifier: str | None = doc(
        "a retaincl method run on the same stream for its accuracy matrix (null: none)", default="simplecil"
    )


@dataclass
class AnomalyConfig:
    protocol: Literal["one_class", "stream"] = doc(
        "one_class: each class in turn is normal; stream: novelty of unseen classes after each task",
        default="one_class",
    )
    input: Literal["images", "features"] = doc(
        "images: a conv MemAE on pixels; features: an MLP MemAE on frozen backbone features",
        default="images",
    )
    models: list[Variant] = doc(
        "variants to run: memae; memae_no_shrink (lambda=0); memae_no_entropy (alpha=0); memae_nonsparse "
        "(lambda=0, alpha=0: the paper's MemAE-nonSpar); ae (memory off); one_class only: pca (reconstruction "
        "error of a PCA on the inputs) and class_mean (squared distance to the mean training input)",
        default_factory=lambda: ["memae", "ae"],
    )
    normal_classes: list[int] | None = doc("one_class: the classes taken as normal in turn (null: all)", default=None)
    seed: int = doc("seed of weights and batch order; recorded in results", default=1993)
    device: str = doc("cpu, cuda, cuda:N or auto", default="auto")
    threads: int | None = doc(
        "torch CPU threads (null: torch's default); 1 is much faster on a machine shared with other jobs",
        default=None,
    )
    output_dir: str = doc("folder for results and saved models", default="runs")
    name: str | None = doc("run name; default derived from protocol, input, data and seed", default=None)
    quiet: bool = doc("no progress bars", default=False)
    save_models: bool = doc("write every trained model as .safetensors beside the results", default=True)
    model: ModelConfig = doc("architecture and memory", default_factory=ModelConfig)
    train: TrainConfig = doc("optimisation", default_factory=TrainConfig)
    baselines: BaselineConfig = doc("the non-neural baselines pca and class_mean", default_factory=BaselineConfig)
    selection: SelectionConfig = doc(
        "one_class: choose settings per variant on a validation split of the training data", default_factory=SelectionConfig
    )
    stream: StreamConfig = doc("stream protocol", default_factory=StreamConfig)
    data: DataConfig = doc("data source", default_factory=DataConfig)
    scenario: ScenarioConfig = doc("stream protocol: how the source becomes tasks", default_factory=ScenarioConfig)
    backbone: BackboneConfig = doc("features: the frozen pre-trained encoder", default_factory=BackboneConfig)
    cache: CacheConfig = doc("feature cache", default_factory=CacheConfig)
    eval: EvalConfig = doc("batch size of feature extraction and scoring", default_factory=EvalConfig)

    def validate(self) -> None:
        if not self.models:
            raise ConfigError(f"models must name at least one of {', '.join(VARIANT_NAMES)}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError("threads must be >= 1 (or null for torch's default)")
        if len(set(self.models)) != len(self.models):
            raise ConfigError(f"models lists a variant twice: {self.models}")
        if self.protocol == "stream":
            extra = [m for m in self.models if m not in NEURAL_VARIANTS]
            if extra:
                raise ConfigError(f"models {extra}: the stream protocol runs the autoencoder variants only ({', '.join(NEURAL_VARIANTS)})")
            if self.selection.grid:
                raise ConfigError("selection.grid: model selection is defined for protocol=one_class only; remove it")
        for variant in self.selection.grid:  # a grid of a variant not in models is not used
            for point in grid_points(self.selection.grid[variant]):
                with_settings(self, point, where=f"selection.grid.{variant}")  # every combination must be valid

    def run_name(self) -> str:
        if self.name:
            return self.name
        return f"anomaly-{self.protocol}-{self.input}-{self.data.source.replace(':', '_')}-seed{self.seed}"


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of a grid, in the order the keys and values are written."""
    points: list[dict[str, Any]] = [{}]
    for key, values in grid.items():
        points = [{**p, key: v} for p in points for v in values]
    return points


def with_settings(cfg: AnomalyConfig, settings: dict[str, Any], where: str = "settings") -> AnomalyConfig:
    """A copy of ``cfg`` with ``section.key`` values replaced (validated like the config)."""
    sections: dict[str, dict[str, Any]] = {}
    for key, value in settings.items():
        check_grid_key(where, key)
        section, _, name = key.partition(".")
        sections.setdefault(section, {})[name] = value
    changes = {}
    for section, values in sections.items():
        tree = {**to_dict(getattr(cfg, section)), **values}
        try:
            changes[section] = build(GRID_SECTIONS[section], tree, prefix=section)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from err
    return dataclasses.replace(cfg, **changes)


def load_anomaly_config(path: str | Path | None, overrides: list[str] | None = None) -> AnomalyConfig:
    """Read a YAML file (or the defaults), apply ``key=value`` overrides, validate."""
    tree: dict[str, Any] = read_yaml(path) if path is not None else {}
    for text in overrides or []:
        keys, value = parse_override(text)
        apply_override(tree, keys, value)
    return build(AnomalyConfig, tree)
