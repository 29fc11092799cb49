"""The typed config of ``retaincl anomaly``: which protocol, on what input, which models.

Built with :func:`retaincl.config.build`, so an unknown or misspelt key is an error that
names it and suggests the closest key, as for ``retaincl run``. The data, scenario,
backbone, cache and eval sections are the same dataclasses ``retaincl run`` uses.
"""

from __future__ import annotations

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
)

Variant = Literal["memae", "ae", "memae_nonsparse"]


@dataclass
class ModelConfig:
    memory_size: int = doc("N, the number of memory items (the paper: 100 for MNIST)", default=100)
    shrink_threshold: float | None = doc(
        "lambda of the hard shrinkage (eq. 7); null = 1/N, the low end of the paper's [1/N, 3/N]",
        default=None,
    )
    entropy_weight: float = doc("alpha, weight of the addressing entropy in the loss (eq. 10)", default=0.0002)
    channels: list[int] = doc("images: channels of the stride-2 3x3 conv encoder layers", default_factory=lambda: [16, 32, 64])
    addressing: Literal["position", "whole"] = doc(
        "images: the memory addresses each spatial position's C-dim vector, or the whole flattened encoding",
        default="position",
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
        if not self.channels or min(self.channels) < 1:
            raise ConfigError("model.channels needs at least one layer, every width >= 1")
        if self.code_dim < 1 or any(h < 1 for h in self.hidden):
            raise ConfigError("model.code_dim and every model.hidden width must be >= 1")


@dataclass
class TrainConfig:
    epochs: int = doc("passes over the normal training data", default=30)
    batch_size: int = doc("training batch size", default=32)
    lr: float = doc("Adam learning rate", default=0.001)
    weight_decay: float = doc("Adam weight decay", default=0.0)

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError("train.epochs and train.batch_size must be >= 1 and train.lr > 0")


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
        "variants to run: memae, ae (memory off), memae_nonsparse (lambda=0, alpha=0)",
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
    stream: StreamConfig = doc("stream protocol", default_factory=StreamConfig)
    data: DataConfig = doc("data source", default_factory=DataConfig)
    scenario: ScenarioConfig = doc("stream protocol: how the source becomes tasks", default_factory=ScenarioConfig)
    backbone: BackboneConfig = doc("features: the frozen pre-trained encoder", default_factory=BackboneConfig)
    cache: CacheConfig = doc("feature cache", default_factory=CacheConfig)
    eval: EvalConfig = doc("batch size of feature extraction and scoring", default_factory=EvalConfig)

    def validate(self) -> None:
        if not self.models:
            raise ConfigError("models must name at least one of memae, ae, memae_nonsparse")
        if self.threads is not None and self.threads < 1:
            raise ConfigError("threads must be >= 1 (or null for torch's default)")
        if len(set(self.models)) != len(self.models):
            raise ConfigError(f"models lists a variant twice: {self.models}")

    def run_name(self) -> str:
        if self.name:
            return self.name
        return f"anomaly-{self.protocol}-{self.input}-{self.data.source.replace(':', '_')}-seed{self.seed}"


def load_anomaly_config(path: str | Path | None, overrides: list[str] | None = None) -> AnomalyConfig:
    """Read a YAML file (or the defaults), apply ``key=value`` overrides, validate."""
    tree: dict[str, Any] = read_yaml(path) if path is not None else {}
    for text in overrides or []:
        keys, value = parse_override(text)
        apply_override(tree, keys, value)
    return build(AnomalyConfig, tree)
