"""Training configurations: one validated `TrainConfig`, named presets stored as TOML in `models/presets/`.

A preset is data, not code: `models/presets/sa.toml` holds the paper's Appendix B.2 values for Symmetric
Alignment, `wm_tpe.toml` the first column of Table 5, and so on. `load_preset("sa")` reads one;
`load_preset("my_run.toml")` reads a file, which may start from a preset with `base = "sa"` and change a
few keys. Unknown keys and wrong types are errors naming the file and the key.

Conventions (units are epochs unless said otherwise):
- `epochs` counts epochs of the task objective J. With `delay_epochs = d`, the run first spends d epochs on
  the alignment loss R alone, so it lasts `d + epochs` epochs and every J milestone is shifted by d.
- `lr_drops` are epochs (of J) at which both J's and R's learning rates are multiplied by `lr_drop_factor`
  (the paper drops them "synchronously"); `alignment.lr_drops` overrides this for R alone.
"""
from __future__ import annotations

import tomllib
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_serializer, model_validator

from .errors import UnknownNameError
from .layer_ops import LayerOps

PRESET_DIR = Path(__file__).with_name("presets")


class _Strict(BaseModel):
    """Frozen, unknown keys rejected; fields in `_OMIT_AT_DEFAULT` are left out of dumps at their default.

    Those are fields added after configs were first recorded in checkpoints: leaving them out while they
    are at their default keeps earlier checkpoints' configs equal to today's (reuse of finished runs) and
    keeps content keys computed from `model_dump()` where they were.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)
    _OMIT_AT_DEFAULT: ClassVar[dict] = {}

    @model_serializer(mode="wrap")
    def _omit_new_fields_at_default(self, handler):
        data = handler(self)
        for key, default in self._OMIT_AT_DEFAULT.items():
            if key in data and data[key] == default and type(data[key]) is type(default):
                del data[key]
        return data


class AlignmentConfig(_Strict):
    """Optimizer and schedule of the alignment loss R, which trains only the backward weights B."""

    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = Field(1e-3, ge=0)
    momentum: float = Field(0.0, ge=0, lt=1, description="SGD only; 0 is the paper's 'Vanilla GD'")
    warmup_epochs: float = Field(0.0, ge=0, description="linear warm-up of R's rate; used only when delay_epochs = 0")
    lr_drops: list[float] | None = Field(None, description="None: drop in sync with the task objective's lr_drops")
    input_noise: float = Field(0.0, ge=0, description="std of Gaussian inputs to the backward pass (0: none)")
    input_noise_mode: Literal["replace", "perturb"] = "replace"
    batch_fraction: float = Field(1.0, gt=0, le=1, description=(
        "share of the batch R is evaluated on: the first ceil(f * batch) samples (1: all, the paper's setting); "
        "unbiased because batches are shuffled, see models.alignment"))

    _OMIT_AT_DEFAULT: ClassVar[dict] = {"batch_fraction": 1.0}


class TrainConfig(_Strict):
    """Everything that determines a training run, so that a checkpoint's `config` reproduces it."""

    name: str = Field("custom", description="preset name this configuration came from")
    rule: str = Field("bp", description="rule name or primitive spec, see models.rules.get_rule")
    terms: dict[str, float] | None = Field(None, description="primitive weights replacing the rule's defaults")
    arch: str = "resnet18"
    width: float = Field(1.0, gt=0)
    small_input: bool = False
    num_classes: int | None = Field(None, gt=1, description="None: taken from the training set")
    image_size: int = Field(224, ge=8)

    epochs: int = Field(90, ge=0, description="epochs of the task objective J (delay epochs come on top)")
    batch_size: int = Field(256, ge=1, description="global batch size (split across DDP processes)")
    lr: float = Field(0.1, ge=0, description="peak learning rate of the forward optimizer (SGD)")
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(1e-4, ge=0, description="L2 on forward kernels only (not BN, not biases)")
    warmup_epochs: float = Field(5.0, ge=0)
    lr_drops: list[float] = Field(default_factory=lambda: [30.0, 60.0, 80.0])
    lr_drop_factor: float = Field(0.1, gt=0, le=1)

    alignment: AlignmentConfig = Field(default_factory=AlignmentConfig)
    alternating: bool = Field(False, description="alternate J-only and R-only updates instead of one joint step")
    delay_epochs: int = Field(0, ge=0, description="epochs of R alone before J starts")
    update_noise: float = Field(0.0, ge=0, description="std of Gaussian noise added to every update, times the lr")
    layer_ops: LayerOps = Field(default_factory=LayerOps)
    amp: bool = Field(False, description="bf16 autocast for the forward pass and task loss (CUDA, and CPU)")

    seed: int = 0
    num_workers: int = Field(0, ge=0)
    eval_batch_size: int | None = Field(None, ge=1)

    _OMIT_AT_DEFAULT: ClassVar[dict] = {"amp": False}

    @model_validator(mode="after")
    def _check_rule(self) -> "TrainConfig":
        if sorted(self.lr_drops) != list(self.lr_drops):
            raise ValueError(f"lr_drops must be increasing, got {self.lr_drops}")
        return self


def preset_names() -> list[str]:
    """Names of the presets shipped in `models/presets/` (sorted)."""
    return sorted(path.stem for path in PRESET_DIR.glob("*.toml"))


PRESETS: tuple[str, ...] = tuple(preset_names())


def load_preset(name_or_path: str | Path, **overrides) -> TrainConfig:
    """A `TrainConfig` from a preset name (`"sa"`) or a TOML file path, with optional keyword overrides.

    Raises KeyError listing the valid names for an unknown name, FileNotFoundError for a missing file,
    ValueError naming the file and key for bad contents.
    """
    text = str(name_or_path)
    looks_like_path = isinstance(name_or_path, Path) or text.endswith(".toml") or "/" in text
    if not looks_like_path:
        if text not in preset_names():
            raise UnknownNameError(f"unknown preset {text!r}; valid presets: {', '.join(preset_names())} "
                                   "(or a .toml file path)")
        path = PRESET_DIR / f"{text}.toml"
    else:
        path = Path(text)
    data = _read_toml_with_base(path, seen=())
    if not looks_like_path:
        data.setdefault("name", text)
    return _validate(_deep_merge(data, overrides), source=str(path))


def with_overrides(config: TrainConfig, **overrides) -> TrainConfig:
    """A copy of `config` with some fields replaced (None values are ignored), validated again.

    Typical CPU use: `with_overrides(cfg, epochs=2, batch_size=64, width=0.25, small_input=True, image_size=32)`.
    """
    updates = {key: value for key, value in overrides.items() if value is not None}
    return _validate(_deep_merge(config.model_dump(), updates), source="overrides")


def config_from_dict(data: dict, source: str = "config") -> TrainConfig:
    """Validate a plain dict (e.g. the `config` stored in a checkpoint's metadata)."""
    return _validate(dict(data), source=source)


def _read_toml_with_base(path: Path, seen: tuple[Path, ...]) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{path}: not valid TOML: {error}") from None
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ValueError(f"{path}: key 'base' must be a preset name or a .toml path, got {base!r}")
    base_path = PRESET_DIR / f"{base}.toml" if base in preset_names() else (path.parent / base)
    if not base_path.is_file():
        raise UnknownNameError(f"{path}: base {base!r} is neither a preset ({', '.join(preset_names())}) nor a file")
    if base_path.resolve() in seen:
        raise ValueError(f"{path}: 'base' chain loops back to {base_path}")
    merged = _deep_merge(_read_toml_with_base(base_path, seen + (base_path.resolve(),)), data)
    if base in preset_names() and "name" not in data:
        merged["name"] = base
    return merged


def _deep_merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key != "terms":
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _validate(data: dict, source: str) -> TrainConfig:
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            key = ".".join(str(part) for part in item["loc"]) or "(top level)"
            detail = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
            problems.append(f"key {key!r}: {detail} (got {item.get('input')!r})")
        raise ValueError(f"{source}: invalid training config: " + "; ".join(problems)) from None
