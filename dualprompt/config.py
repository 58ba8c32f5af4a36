"""One typed configuration: frozen dataclasses by section, validated at construction, flat-dict round trip.

Field names are unique across sections, so the flat form (`Config.to_flat()`) uses bare names
(`n_ctx`, `mi_weight`, ...): the same keys are Tune search parameters, `--set key=value` overrides and
Parquet columns.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from typing import Any

from .errors import DualpromptError

METHODS = ("zeroshot", "coop", "kgcoop", "dualprompt")
AUG_VARIANTS = ("mix", "virtual")
# Context positions the init words do not cover: CoOp's seeded N(0, 0.02^2) draws, or the init words repeated
# leftwards ("... a photo of a a photo of a"), the same start on every seed.
CTX_FILLS = ("random", "words")
# What a field's absence means in rows and sweep settings written before the field existed, where that is not
# today's default: ctx_fill became "words" by default after sweeps had trained with the random fill.
ABSENT_MEANS: dict[str, Any] = {"ctx_fill": "random"}
PRECISIONS = ("fp32", "amp")
SAMPLING_MODES = ("stable", "coop")
# Where this machine keeps the datasets and the feature cache: places, not data (the dataset's name and
# the catalogue say which data), and a path on one machine means nothing on another, so what a job leaves
# behind (result rows, prompt files) records them as "" (the reader's own default); see `portable_flat`.
MACHINE_LOCAL_FIELDS = ("data_root", "cache_dir")


class ConfigError(DualpromptError):
    """A configuration value is wrong; the message names the field and how to fix it."""


def _require(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{name}: {message}")


def _one_of(value: str, name: str, choices: tuple[str, ...]) -> None:
    _require(value in choices, name, f"{value!r} is not one of {', '.join(choices)}.")


@dataclass(frozen=True)
class BackboneConfig:
    """Which frozen CLIP, and how to run its text tower."""

    backbone: str = "tiny-synthetic"
    pretrained: str = "synthetic"
    precision: str = "fp32"
    # Memory for many classes (measured in the README's Performance section): either recompute each
    # chunk of `text_chunk_size` prompts in backward, or checkpoint every text layer; one is enough.
    text_chunk_size: int = 0  # prompts per text-encoder pass; 0 = all classes in one pass
    checkpoint_text: bool = False  # activation checkpointing of each text transformer layer

    def __post_init__(self) -> None:
        _require(bool(self.backbone), "backbone", "must name an open_clip model, e.g. ViT-B-16.")
        _one_of(self.precision, "precision", PRECISIONS)
        _require(self.text_chunk_size >= 0, "text_chunk_size", "must be >= 0 (0 = no chunking).")


@dataclass(frozen=True)
class PromptConfig:
    """The soft prompt (view 1) and the hand-crafted prompt (view 2)."""

    n_ctx: int = 4
    ctx_init: str = "a photo of a"  # "" = random N(0, 0.02^2) init (whatever ctx_fill: no words to repeat)
    ctx_fill: str = "words"  # positions ctx_init does not cover (CTX_FILLS)
    template: str = ""  # hand-crafted template, "{}" = class name; "" = the dataset's catalogue template
    template_ensemble: bool = False  # hand-crafted view = mean over the template + CLIP's 7 "select" templates

    def __post_init__(self) -> None:
        _require(1 <= self.n_ctx <= 64, "n_ctx", f"{self.n_ctx} is outside 1..64 context vectors.")
        _one_of(self.ctx_fill, "ctx_fill", CTX_FILLS)
        _require(not self.template or self.template.count("{}") == 1, "template",
                 f"{self.template!r} must contain exactly one {{}} where the class name goes.")


@dataclass(frozen=True)
class MethodConfig:
    """Which method, and the weights of its loss terms (only the method's own terms are used)."""

    method: str = "dualprompt"
    mi_weight: float = 1.0
    mi_temperature: float = 0.07
    kg_weight: float = 8.0
    aug_weight: float = 1.0
    aug_strength: float = 0.5  # alpha of Beta(alpha, alpha); 0 = no augmentation
    aug_variant: str = "mix"

    def __post_init__(self) -> None:
        _one_of(self.method, "method", METHODS)
        _one_of(self.aug_variant, "aug_variant", AUG_VARIANTS)
        for name in ("mi_weight", "kg_weight", "aug_weight", "aug_strength"):
            value = getattr(self, name)
            _require(value >= 0, name, f"{value} is negative; loss weights and strengths must be >= 0.")
        _require(self.mi_temperature > 0, "mi_temperature", f"{self.mi_temperature} must be > 0.")


@dataclass(frozen=True)
class DataConfig:
    """Dataset, few-shot sample and the frozen-image feature cache."""

    dataset: str = "synthetic_blurry"
    data_root: str = ""  # "" = the default data root (the offline world is generated there)
    shots: int = 16
    seed: int = 1
    sampling: str = "stable"
    n_views: int = 8  # augmented views cached per training image
    use_feature_cache: bool = True
    cache_dir: str = ""  # "" = the default cache directory
    crop_scale_min: float = 0.08

    def __post_init__(self) -> None:
        _require(bool(self.dataset), "dataset", "must name a catalogue dataset.")
        _require(self.shots >= 1, "shots", f"{self.shots} must be >= 1.")
        _one_of(self.sampling, "sampling", SAMPLING_MODES)
        _require(self.n_views >= 1, "n_views", f"{self.n_views} must be >= 1.")
        _require(0 < self.crop_scale_min <= 1, "crop_scale_min", "must be in (0, 1].")


@dataclass(frozen=True)
class OptimConfig:
    """SGD with a constant warm-up epoch and a cosine schedule, as the CoOp family trains."""

    epochs: int = 50
    batch_size: int = 32
    lr: float = 0.002
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5

    def __post_init__(self) -> None:
        _require(self.epochs >= 1, "epochs", f"{self.epochs} must be >= 1.")
        _require(self.batch_size >= 1, "batch_size", f"{self.batch_size} must be >= 1.")
        _require(self.lr > 0, "lr", f"{self.lr} must be > 0.")
        _require(0 <= self.momentum < 1, "momentum", "must be in [0, 1).")
        _require(self.weight_decay >= 0, "weight_decay", "must be >= 0.")
        _require(0 <= self.warmup_epochs < self.epochs, "warmup_epochs", "must be in [0, epochs).")
        _require(self.warmup_lr > 0, "warmup_lr", "must be > 0.")


SECTIONS = {
    "backbone": BackboneConfig,
    "prompt": PromptConfig,
    "method": MethodConfig,
    "data": DataConfig,
    "optim": OptimConfig,
}


@dataclass(frozen=True)
class Config:
    """The whole run configuration; each component receives only its section."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)

    def to_flat(self) -> dict[str, Any]:
        """All fields as one flat dict keyed by bare field names."""
        flat: dict[str, Any] = {}
        for section in SECTIONS:
            flat.update(dataclasses.asdict(getattr(self, section)))
        return flat

    def portable_flat(self) -> dict[str, Any]:
        """`to_flat` with the machine-local fields blanked: what result rows and prompt files record."""
        return {**self.to_flat(), **dict.fromkeys(MACHINE_LOCAL_FIELDS, "")}

    @classmethod
    def from_flat(cls, flat: dict[str, Any]) -> Config:
        """Build from a flat dict of (a subset of) fields; unknown keys are rejected."""
        return cls().replace(**flat)

    def replace(self, **overrides: Any) -> Config:
        """A copy with some flat fields changed, each value checked against the field's type."""
        unknown = [key for key in overrides if key not in FIELD_SECTION]
        if unknown:
            key = unknown[0]
            close = difflib.get_close_matches(key, FIELD_SECTION, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"{key}: not a configuration field.{hint}")
        by_section: dict[str, dict[str, Any]] = {}
        for key, value in overrides.items():
            by_section.setdefault(FIELD_SECTION[key], {})[key] = _check_type(key, value)
        sections = {
            name: dataclasses.replace(getattr(self, name), **by_section.get(name, {})) for name in SECTIONS
        }
        return Config(**sections)


def _field_types() -> tuple[dict[str, str], dict[str, type]]:
    section_of: dict[str, str] = {}
    type_of: dict[str, type] = {}
    for section, klass in SECTIONS.items():
        hints = typing.get_type_hints(klass)
        for f in dataclasses.fields(klass):
            section_of[f.name] = section
            type_of[f.name] = hints[f.name]
    return section_of, type_of


FIELD_SECTION, FIELD_TYPE = _field_types()


def _check_type(key: str, value: Any) -> Any:
    expected = FIELD_TYPE[key]
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
        raise ConfigError(f"{key}: expected {expected.__name__}, got {value!r} ({type(value).__name__}).")
    return value


def parse_value(key: str, text: str) -> Any:
    """Parse a `--set key=value` string into the field's type, with one clear error if it does not fit."""
    if key not in FIELD_TYPE:
        close = difflib.get_close_matches(key, FIELD_TYPE, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"{key}: not a configuration field.{hint}")
    expected = FIELD_TYPE[key]
    try:
        if expected is bool:
            lowered = text.strip().lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return lowered in ("true", "1", "yes")
        return expected(text)
    except ValueError:
        raise ConfigError(f"{key}: {text!r} is not a valid {expected.__name__}.") from None


def parse_assignment(text: str) -> tuple[str, Any]:
    """A `key=value` command-line string -> (field name, value of the field's type)."""
    key, sep, value = text.partition("=")
    if not sep:
        raise ConfigError(f"{text}: expected KEY=VALUE, e.g. mi_weight=2.0.")
    return key.strip(), parse_value(key.strip(), value)
