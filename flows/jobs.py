"""The steps of a neural fit as plain functions, shared by the `neuralign` CLI and the Prefect flows.

A fit of (checkpoints x dataset x protocol) is:

    resolve_checkpoint(spec)      spec -> checkpoint path (existing file, `random:ARCH`, or a rule/preset
                                  trained on the built-in synthetic object images, reused when present)
    prepare_dataset(spec)         dataset name or folder -> DatasetRef (and the synthetic set generated
                                  into the work folder when asked for)
    extract_checkpoint(...)       checkpoint + stimuli -> on-disk activation store
    fit_layer_region(...)         one layer x one region x some splits -> partial scores (xarray.Dataset)
    write_outputs(...)            all partial scores + checkpoint metadata -> report folder

Everything here is Prefect-free; `flows.flows` wraps these functions in tasks. Everything bulky lives in
the work folder (`$NEURALIGN_WORK`, default `./work`): checkpoints, generated datasets, activations.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

WORK_ENV = "NEURALIGN_WORK"
REAL_DATA_ENV = {"majajhong2015": "NEURALIGN_MAJAJHONG2015"}
RANDOM_PREFIX = "random:"
SYNTHETIC = "synthetic"  # dataset spec: generate neural_data.synth's MajajHong2015-shaped set into the work folder

# Training on 2 CPU cores: a quarter-width ResNet-18 on 32 px synthetic object images for a few epochs.
# These override the preset's values (its rule, alignment optimizer and noise settings stay).
CPU_TRAINING: dict[str, Any] = {
    "width": 0.25,
    "small_input": True,
    "image_size": 32,
    "epochs": 3,
    "batch_size": 64,
    "lr": 0.05,
    "warmup_epochs": 0.0,
    "lr_drops": [2.0],
    "num_workers": 0,
}

# The built-in training set: neural_data.synth.training_set(n_per_class, image_size, seed).
TRAINING_SET: dict[str, Any] = {"n_per_class": 100, "val_per_class": 25, "seed": 0}

# The synthetic neural dataset of the default run (keyword arguments of neural_data.synth.generate).
SYNTHETIC_DATASET: dict[str, Any] = {}

# Extraction settings of the default run (images are resized to image_size before the network).
EXTRACTION: dict[str, Any] = {"image_size": 32, "batch_size": 64}


def work_dir(path: str | os.PathLike | None = None) -> Path:
    """The work folder: `path`, else $NEURALIGN_WORK, else ./work (created, absolute)."""
    folder = Path(path or os.environ.get(WORK_ENV) or "work").expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def digest(payload: Any) -> str:
    """sha256 of a JSON-able value (sorted keys): the content key of configs and parameter sets."""
    text = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------


def resolve_checkpoint(
    spec: str,
    work: str | os.PathLike | None = None,
    *,
    training: dict[str, Any] | None = None,
    training_set: dict[str, Any] | None = None,
    progress: bool = False,
) -> Path:
    """A checkpoint path for `spec`.

    spec: a checkpoint file path (`.pt` with its `.json` sidecar), `random:ARCH` (the architecture at its
    seeded random initialisation: the untrained baseline), or a rule or preset name (`bp`, `fa`, `sa`,
    `wm_tpe`, ...) which is trained on the built-in synthetic object images, or reused from the work folder
    when a checkpoint trained with the same configuration and data is already there.
    training: TrainConfig overrides on top of CPU_TRAINING (e.g. {"epochs": 1, "width": 0.125}).
    training_set: overrides of TRAINING_SET.
    """
    spec = str(spec).strip()
    work = work_dir(work)
    if spec.startswith(RANDOM_PREFIX):
        return random_checkpoint(spec[len(RANDOM_PREFIX):], work, training=training, training_set=training_set)
    if _looks_like_path(spec):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {spec!r}: no such file (give a .pt checkpoint path, "
                                    f"'random:ARCH', or a rule/preset name)")
        return path.resolve()
    config = training_config(spec, training)
    return train_or_reuse(config, work, training_set=training_set, progress=progress)


def _looks_like_path(spec: str) -> bool:
    return spec.endswith((".pt", ".pth")) or os.sep in spec or Path(spec).expanduser().exists()


def training_config(name: str, overrides: dict[str, Any] | None = None):
    """The TrainConfig for a preset name, or for a rule name without a preset, with CPU_TRAINING applied.

    Raises KeyError listing the valid preset and rule names for an unknown name.
    """
    from models import presets, rules

    settings = {**CPU_TRAINING, **(overrides or {})}
    if name in presets.PRESETS:
        return presets.load_preset(name, **settings)
    try:
        rules.get_rule(name)
    except (KeyError, ValueError) as error:
        raise KeyError(
            f"checkpoint {name!r} is not a file, 'random:ARCH', a preset ({', '.join(presets.PRESETS)}) "
            f"or a rule ({', '.join(sorted(rules.RULES))}): {error}"
        ) from None
    return presets.config_from_dict({"name": name, "rule": name, **settings}, source=f"rule {name!r}")


@functools.lru_cache(maxsize=4)
def _training_arrays(n_per_class: int, val_per_class: int, image_size: int, seed: int):
    from neural_data import synth

    train = synth.training_set(n_per_class=n_per_class, image_size=image_size, seed=seed)
    val = synth.training_set(n_per_class=val_per_class, image_size=image_size, seed=seed + 1)
    return train, val


def builtin_training_set(image_size: int, training_set: dict[str, Any] | None = None):
    """(train, val) `models.data.ArrayDataset`s of the synthetic object images (different seeds)."""
    from models.data import ArrayDataset

    spec = {**TRAINING_SET, **(training_set or {})}
    train, val = _training_arrays(spec["n_per_class"], spec["val_per_class"], image_size, spec["seed"])
    tag = f"synth-objects(n_per_class={spec['n_per_class']},size={image_size},seed={spec['seed']})"
    return (
        ArrayDataset(*_images_labels(train), name=f"{tag}/train"),
        ArrayDataset(*_images_labels(val), name=f"{tag}/val"),
    )


def _images_labels(labelled):
    """(images, labels) from what neural_data.synth.training_set returns (a pair or a mapping)."""
    if isinstance(labelled, dict):
        return labelled["images"], labelled["labels"]
    if hasattr(labelled, "images"):
        return labelled.images, labelled.labels
    images, labels = labelled
    return images, labels


def checkpoint_folder(config, work: Path, training_set: dict[str, Any] | None) -> Path:
    """work/checkpoints/<name>-<12 hex of sha256(config, training set)>: one folder per distinct run."""
    key = digest({"config": config.model_dump(), "training_set": {**TRAINING_SET, **(training_set or {})}})
    return work / "checkpoints" / f"{config.name}-{key[:12]}"


def train_or_reuse(config, work: Path, *, training_set=None, progress: bool = False,
                   device: str | None = None) -> Path:
    """Train `config` on the built-in set into its checkpoint folder, or return the checkpoint already there.

    An interrupted training resumes from its last finished epoch (models.train's resume).
    """
    from models.presets import with_overrides
    from models.train import train

    train_set, val_set = builtin_training_set(config.image_size, training_set)
    if config.num_classes is None:  # fixed before hashing, as the trainer records it
        config = with_overrides(config, num_classes=train_set.num_classes)
    folder = checkpoint_folder(config, work, training_set)
    existing = find_checkpoint(folder, config)
    if existing is not None:
        return existing
    return Path(train(config, train_set, val_set, folder, resume=True, progress=progress, device=device)).resolve()


def find_checkpoint(folder: Path, config) -> Path | None:
    """A finished checkpoint in `folder` whose sidecar config equals `config` (None when there is none)."""
    if not folder.is_dir():
        return None
    wanted = json.loads(config.model_dump_json())
    for sidecar in sorted(folder.glob("*.json")):
        checkpoint = sidecar.with_suffix(".pt")
        if not checkpoint.is_file():
            continue
        meta = json.loads(sidecar.read_text())
        finished = meta.get("epoch", -1) >= config.epochs or meta.get("status") == "diverged"
        if meta.get("config") == wanted and finished:
            return checkpoint.resolve()
    return None


def random_checkpoint(arch: str, work: Path, *, training=None, training_set=None, seed: int = 0) -> Path:
    """The seeded random initialisation of `arch` (same width/input size as the trained ones), saved once."""
    import torch

    from models import build_model
    from models.checkpoint import save_checkpoint
    from models.presets import config_from_dict

    settings = {**CPU_TRAINING, **(training or {})}
    image_size = settings["image_size"]
    train_set, _ = builtin_training_set(image_size, training_set)
    config = config_from_dict(
        {**settings, "name": f"random-{arch}", "rule": "bp", "arch": arch, "epochs": 0, "seed": seed,
         "num_classes": train_set.num_classes},
        source=f"checkpoint 'random:{arch}'",
    )
    folder = checkpoint_folder(config, work, training_set)
    path = folder / f"random-{arch}.pt"
    if path.is_file() and path.with_suffix(".json").is_file():
        return path.resolve()
    torch.manual_seed(seed)
    try:
        model = build_model(arch, "bp", num_classes=config.num_classes, width=config.width,
                            small_input=config.small_input)
    except KeyError as error:
        raise KeyError(f"checkpoint 'random:{arch}': unknown architecture ({error})") from None
    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, model, config, state={"epoch": 0}, metrics={"top1": None, "top5": None})
    return path.resolve()


def checkpoint_metadata(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint's sidecar JSON plus its `path` (FileNotFoundError naming the file when absent)."""
    checkpoint = Path(checkpoint)
    sidecar = checkpoint.with_suffix(".json")
    if not sidecar.is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint}: metadata file {sidecar} is missing")
    meta = json.loads(sidecar.read_text())
    meta["path"] = str(checkpoint.resolve())
    return meta


@functools.lru_cache(maxsize=256)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def checkpoint_digest(checkpoint: str | os.PathLike) -> str:
    """Content key of a checkpoint: the weights sha256 of its metadata plus the file's own sha256.

    The file hash makes a checkpoint overwritten in place (new weights, same name) a different key.
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path}: no such file")
    stat = path.stat()
    file_hash = _file_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    weights = checkpoint_metadata(path).get("sha256", "")
    return f"{weights}:{file_hash}" if weights else file_hash


def check_checkpoint_spec(spec: str) -> None:
    """Fail fast, before any work starts, on a checkpoint spec that can never resolve.

    FileNotFoundError for a path that does not exist; KeyError for an unknown rule/preset or architecture.
    """
    spec = str(spec).strip()
    if spec.startswith(RANDOM_PREFIX):
        from models import ARCHS

        arch = spec[len(RANDOM_PREFIX):]
        if arch not in ARCHS:
            raise KeyError(f"checkpoint {spec!r}: unknown architecture {arch!r}; valid: {', '.join(sorted(ARCHS))}")
        return
    if _looks_like_path(spec):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {spec!r}: no such file (give a .pt checkpoint path, "
                                    f"'random:ARCH', or a rule/preset name)")
        checkpoint_metadata(path)
        return
    training_config(spec)


def checkpoint_summary(checkpoint: str | os.PathLike, spec: str | None = None) -> dict[str, Any]:
    """What the report needs of a checkpoint: its metadata plus a short unique `name` for tables."""
    meta = checkpoint_metadata(checkpoint)
    spec = str(spec or checkpoint)
    name = spec if not _looks_like_path(spec) else Path(spec).stem
    if name == "checkpoint":  # trainer folders: run/checkpoint.pt -> the folder's name
        name = Path(spec).parent.name
    meta["name"] = name
    meta["spec"] = spec
    return meta


def train_checkpoint(rule: str, *, arch: str = "resnet18", data: str = "builtin:synthetic", epochs: int | None = None,
                     out: str | os.PathLike | None = None, training: dict[str, Any] | None = None,
                     work: str | os.PathLike | None = None, progress: bool = False) -> Path:
    """Train one rule or preset (the `train-rule` flow); returns the checkpoint path.

    data `builtin:synthetic` uses the CPU-sized defaults (jobs.CPU_TRAINING); other data (`builtin:digits`,
    an ImageNet folder) use the preset's own sizes, with `training` overrides either way.
    """
    work = work_dir(work)
    overrides = {**(training or {}), "arch": arch}
    if epochs is not None:
        overrides["epochs"] = epochs
    if data == "builtin:synthetic":
        config = training_config(rule, overrides)
        if out is None:
            return train_or_reuse(config, work, progress=progress)
        from models.presets import with_overrides
        from models.train import train

        train_set, val_set = builtin_training_set(config.image_size)
        config = with_overrides(config, num_classes=train_set.num_classes)
        return Path(train(config, train_set, val_set, Path(out), resume=True, progress=progress)).resolve()
    from models import data as model_data
    from models import presets
    from models.train import train

    base = presets.load_preset(rule) if rule in presets.PRESETS else training_config(rule)
    config = presets.with_overrides(base, **overrides)
    train_set, val_set = model_data.resolve(data, image_size=config.image_size, seed=config.seed)
    folder = Path(out) if out else work / "checkpoints" / f"{config.name}-{digest([config.model_dump(), data])[:12]}"
    return Path(train(config, train_set, val_set, folder, resume=True, progress=progress)).resolve()


# --------------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------------


def prepare_dataset(spec: str, work: str | os.PathLike | None = None, *, data_root: str | None = None,
                    synthetic: dict[str, Any] | None = None) -> dict[str, Any]:
    """A reference to a loadable dataset: {"spec", "kwargs", "path", "identifier", "name", "regions"}.

    spec: `synthetic` (neural_data.synth.generate(**synthetic) into <work>/datasets/, once per setting),
    a registered name (with `data_root`, or its environment variable, e.g. $NEURALIGN_MAJAJHONG2015),
    or a dataset folder / file. The reference is small and JSON-able: tasks reload the dataset from it.
    """
    work = work_dir(work)
    kwargs: dict[str, Any] = {}
    if spec == SYNTHETIC:
        spec = str(generate_synthetic(work, synthetic))
    else:
        root = data_root or os.environ.get(REAL_DATA_ENV.get(spec.lower(), ""), "") or None
        if root:
            kwargs["root"] = str(Path(root).expanduser().resolve())
    dataset = load_dataset(spec, json.dumps(kwargs, sort_keys=True))
    return {
        "spec": spec,
        "kwargs": kwargs,
        "path": str(dataset.source),
        "identifier": dataset.identifier,
        "name": dataset.name,
        "regions": list(dataset.regions),
    }


def generate_synthetic(work: Path, options: dict[str, Any] | None = None) -> Path:
    """The synthetic MajajHong2015-shaped dataset for `options`, generated into the work folder once."""
    import shutil

    from neural_data import synth

    options = {**SYNTHETIC_DATASET, **(options or {})}
    folder = work / "datasets" / f"synthetic-{digest(options)[:12]}"
    if (folder / "dataset.toml").is_file():
        return folder
    partial = folder.with_name(folder.name + f".partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    synth.generate(partial, **options)
    try:
        partial.rename(folder)
    except OSError:  # another process finished the same folder first: theirs is identical
        shutil.rmtree(partial, ignore_errors=True)
    return folder


@functools.lru_cache(maxsize=4)
def load_dataset(spec: str, kwargs_json: str = "{}"):
    """neural_data.load(spec, **kwargs), kept per process so that many fits on one worker load it once."""
    import neural_data

    return neural_data.load(spec, **json.loads(kwargs_json))


def dataset_of(ref: dict[str, Any]):
    """The NeuralDataset behind a `prepare_dataset` reference."""
    return load_dataset(ref["spec"], json.dumps(ref.get("kwargs", {}), sort_keys=True))
