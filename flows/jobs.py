"""The steps of a neural fit as plain functions, shared by the `neuralign` CLI and the Prefect flows.

A fit of (checkpoints x dataset x protocol) is:

    resolve_checkpoint(spec)      spec -> checkpoint path (existing file, `random:ARCH`, or a rule/preset
                                  trained on the built-in synthetic object images, reused when present)
    prepare_dataset(spec)         dataset name or folder -> small JSON-able reference (the synthetic set
                                  is generated into the work folder when asked for)
    extract_checkpoint(...)       checkpoint + stimuli -> on-disk activation store (pipeline.extract)
    layer_gram(...)               one layer's Gram matrix X X^T, cached beside the store
    fit_layer_region(...)         one layer x one region x some splits -> PLS test predictions
    score_checkpoint(...)         all predictions of a checkpoint -> scores (pipeline.score.fit_scores)
    write_outputs(...)            scores + checkpoint metadata -> report folder (pipeline.report)

`run_fit` chains them in one process (the `neuralign fit` command).

Everything here is Prefect-free; `flows.flows` wraps these functions in tasks. Everything bulky lives in
the work folder (`$NEURALIGN_WORK`, default `./work`): checkpoints, generated datasets, activations.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

WORK_ENV = "NEURALIGN_WORK"
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
SYNTHETIC_DATASET: dict[str, Any] = {"n_images": 320, "n_sites": 40, "reps": 6, "seed": 0, "image_size": 64}

# Extraction settings of the default run (images are resized to image_size before the network).
EXTRACTION: dict[str, Any] = {"image_size": 32, "batch_size": 64}

N_COMPONENTS = 25  # PLS components (the paper's and Brain-Score's)


class UnknownCheckpointError(KeyError):
    """A checkpoint spec that is not a file, `random:ARCH`, a preset or a rule."""

    def __str__(self) -> str:  # KeyError would quote the message like a dict key
        return str(self.args[0]) if self.args else ""


def _message(error: BaseException) -> str:
    return str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)


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
        raise UnknownCheckpointError(
            f"checkpoint {name!r} is not a file, 'random:ARCH', a preset ({', '.join(presets.PRESETS)}) "
            f"or a rule ({', '.join(sorted(rules.RULES))}): {_message(error)}"
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
        raise UnknownCheckpointError(f"checkpoint 'random:{arch}': unknown architecture ({_message(error)})") from None
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


def training_log(checkpoint: str | os.PathLike) -> list[dict[str, Any]]:
    """The per-epoch records the trainer wrote beside a checkpoint (without per-layer metrics); [] if none."""
    from models.train import LOG_NAME

    log = Path(checkpoint).with_name(LOG_NAME)
    if not log.is_file():
        return []
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [{key: value for key, value in record.items() if key != "layers"} for record in records]


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
            raise UnknownCheckpointError(f"checkpoint {spec!r}: unknown architecture {arch!r}; "
                                         f"valid: {', '.join(sorted(ARCHS))}")
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
                     training_set: dict[str, Any] | None = None, work: str | os.PathLike | None = None,
                     progress: bool = False) -> Path:
    """Train one rule or preset (the `train-rule` flow); returns the checkpoint path.

    data `builtin:synthetic` uses the CPU-sized defaults (jobs.CPU_TRAINING); other data (`builtin:digits`,
    an ImageNet folder) use the preset's own sizes, with `training` overrides either way; `training_set`
    overrides jobs.TRAINING_SET. Without `out`, builtin:synthetic checkpoints go to (and are reused from)
    the same content-keyed folders as neural-fit's.
    """
    work = work_dir(work)
    overrides = {**(training or {}), "arch": arch}
    if epochs is not None:
        overrides["epochs"] = epochs
    if data == "builtin:synthetic":
        config = training_config(rule, overrides)
        if out is None:
            return train_or_reuse(config, work, training_set=training_set, progress=progress)
        from models.presets import with_overrides
        from models.train import train

        train_set, val_set = builtin_training_set(config.image_size, training_set)
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
    a registered name (with `data_root`; without it the loader reads its environment variable, e.g.
    $NEURALIGN_MAJAJHONG2015),
    or a dataset folder / file. The reference is small and JSON-able: tasks reload the dataset from it.
    """
    work = work_dir(work)
    kwargs: dict[str, Any] = {}
    if spec == SYNTHETIC:
        spec = str(generate_synthetic(work, synthetic))
    elif data_root:
        kwargs["data_root"] = str(Path(data_root).expanduser().resolve())
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
    """The synthetic MajajHong2015-shaped dataset for `options` (keyword arguments of
    neural_data.synth.generate: n_images, n_sites, reps, seed, image_size), generated into
    <work>/datasets once and reused after."""
    from neural_data import synth

    return synth.cached(**{**SYNTHETIC_DATASET, **(options or {})}, cache_dir=work / "datasets")


@functools.lru_cache(maxsize=4)
def load_dataset(spec: str, kwargs_json: str = "{}"):
    """neural_data.load(spec, **kwargs), kept per process so that many fits on one worker load it once."""
    import neural_data

    return neural_data.load(spec, **json.loads(kwargs_json))


def dataset_of(ref: dict[str, Any]):
    """The NeuralDataset behind a `prepare_dataset` reference."""
    return load_dataset(ref["spec"], json.dumps(ref.get("kwargs", {}), sort_keys=True))


# --------------------------------------------------------------------------------------------------
# Extraction, fits, report
# --------------------------------------------------------------------------------------------------


def protocol_spec(name: str = "paper", options: dict[str, Any] | None = None) -> dict[str, Any]:
    """A validated, JSON-able protocol: every field of pipeline.protocols.Protocol plus the PLS
    `n_components` (default 25), so that it keys caches. options: e.g. {"n_splits": 2, "n_components": 10}."""
    import dataclasses

    from pipeline.protocols import get_protocol

    options = dict(options or {})
    n_components = int(options.pop("n_components", N_COMPONENTS))
    if n_components < 1:
        raise ValueError(f"protocol option 'n_components' must be >= 1, got {n_components}")
    return {**dataclasses.asdict(get_protocol(name, **options)), "n_components": n_components}


def _protocol(spec: dict[str, Any]):
    from pipeline.protocols import Protocol

    return Protocol(**{key: value for key, value in spec.items() if key != "n_components"})


def extract_checkpoint(checkpoint: str | os.PathLike, dataset: dict[str, Any], *, layers: Any = "default",
                       image_size: int = 224, batch_size: int = 64, device: str | None = None,
                       work: str | os.PathLike | None = None, progress: bool = False) -> dict[str, Any]:
    """Activations of a checkpoint's layers on the dataset's stimuli, in <work>/activations.

    Returns {"store": path of the complete HDF5 store, "layers": layer names in forward order}.
    Reuses a complete store with the same content key (weights, stimuli, preprocessing, layers).
    """
    from models.checkpoint import load_checkpoint
    from pipeline.extract import extract

    model, meta = load_checkpoint(checkpoint)
    store = extract(model, dataset_of(dataset).stimuli, layers=layers, image_size=image_size,
                    batch_size=batch_size, device=device, cache_dir=work_dir(work) / "activations",
                    model_id=str(checkpoint), progress=progress)
    return {"store": str(store.path), "layers": list(store.layers)}


def layer_gram(store: str, layer: str, device: str | None = None) -> str:
    """Compute (or reuse) the cached Gram matrix X X^T of one layer; returns its file path.

    Done once per layer before the fits of that layer, which then only read it.
    """
    from pipeline.store import ActivationStore

    activations = ActivationStore(store)
    activations.gram(layer, device=device)
    return str(activations.gram_path(layer))


def split_batches(dataset: dict[str, Any], protocol: dict[str, Any], per_task: int) -> list[list[int]]:
    """The protocol's split indices in consecutive batches of `per_task`: [[0..4], [5..9]]."""
    if per_task < 1:
        raise ValueError(f"splits_per_task must be >= 1, got {per_task}")
    n = protocol["n_splits"]
    return [list(range(start, min(start + per_task, n))) for start in range(0, n, per_task)]


@dataclass
class FitProblem:
    """What the fits of one dataset share: averaged responses, their stimulus order and the splits."""

    averaged: Any  # xarray.DataArray (presentation, neuroid)
    site_regions: Any  # (n_sites,) str
    splits: list  # [(train_idx, test_idx)] row indices of `averaged`


def fit_problem(dataset: dict[str, Any], protocol: dict[str, Any]) -> FitProblem:
    """The averaged assembly and the protocol's splits, as pipeline.score.fit_scores builds them."""
    import numpy as np
    import pandas as pd

    averaged = dataset_of(dataset).averaged()
    metadata = pd.DataFrame({name: np.asarray(coord.values) for name, coord in averaged.coords.items()
                             if coord.dims == ("presentation",)}).reset_index(drop=True)
    splits = _protocol(protocol).splits(metadata)
    return FitProblem(averaged, averaged["region"].values.astype(str), splits)


def fit_layer_region(store: str, dataset: dict[str, Any], *, layer: str, region: str, protocol: dict[str, Any],
                     splits: Sequence[int]) -> dict[tuple[str, str, int], Any]:
    """PLS fits of one layer to one region for some of the protocol's splits.

    Returns {(layer, region, split): test-image predictions (n_test, n_region_sites)}: the unit of work
    of pipeline.score.fit_scores (its `fit_one`), computed here so that the fits can be spread over
    workers; `write_outputs` hands them back to fit_scores, which computes every score from them.
    """
    import numpy as np

    from pipeline.score import fit_one
    from pipeline.store import ActivationStore

    problem = fit_problem(dataset, protocol)
    activations = ActivationStore(store)
    ids = problem.averaged["stimulus_id"].values.astype(str)
    gram = activations.gram(layer, rows=list(ids))
    sites = problem.site_regions == region
    if not sites.any():
        raise KeyError(f"dataset {dataset['identifier']}: no sites in region {region!r}")
    Y = np.asarray(problem.averaged.transpose("presentation", "neuroid").values, dtype=np.float64)[:, sites]
    predictions = {}
    for split in splits:
        train, test = problem.splits[split]
        predictions[(layer, region, int(split))] = fit_one(gram, Y, train, test, protocol["n_components"])
    return predictions


def score_checkpoint(store: str, dataset: dict[str, Any], protocol: dict[str, Any], predictions: dict,
                     checkpoint: str):
    """The scores xarray.Dataset of one checkpoint (pipeline.score.fit_scores) from its precomputed fits."""
    from pipeline.score import fit_scores
    from pipeline.store import ActivationStore

    data = dataset_of(dataset)
    return fit_scores(ActivationStore(store), data.averaged(), _protocol(protocol), checkpoint=checkpoint,
                      trials=data.assembly, n_components=protocol["n_components"], dataset=dataset["identifier"],
                      fits=predictions)


def write_outputs(scores: list, checkpoints: list[dict[str, Any]], out: str | os.PathLike) -> Path:
    """Write the report folder of per-checkpoint scores (pipeline.report.write_report merges them):
    scores.nc, summary.csv/.json, best_layers.csv, checkpoints.json, report.md/.html, PNG plots."""
    from pipeline.report import write_report

    if not scores:
        raise ValueError("write_outputs: no scores to report (no checkpoints were given)")
    out = Path(out)
    write_report(list(scores), {meta["name"]: meta for meta in checkpoints}, out)
    return out


def compare_runs(run_dirs: Sequence[str | os.PathLike], out: str | os.PathLike) -> Path:
    """One comparison report from finished report folders (pipeline.report.compare)."""
    from pipeline.report import compare

    missing = [str(run) for run in run_dirs if not Path(run).is_dir()]
    if missing:
        raise FileNotFoundError(f"compare: run folder(s) not found: {', '.join(missing)}")
    out = Path(out)
    compare([Path(run) for run in run_dirs], out)
    return out


def run_fit(checkpoints: Sequence[str], dataset: str, *, protocol: str = "paper", layers: Any = "default",
            out: str | os.PathLike, device: str | None = None, data_root: str | None = None,
            work: str | os.PathLike | None = None, protocol_options: dict | None = None,
            training: dict | None = None, training_set: dict | None = None, synthetic: dict | None = None,
            extraction: dict | None = None, progress: bool = False) -> Path:
    """The whole neural fit in this process, in order (what `neuralign fit` runs; the flow runs the same
    steps as parallel, cached tasks). Returns the report folder."""
    work = work_dir(work)
    for spec in checkpoints:
        check_checkpoint_spec(spec)
    ref = prepare_dataset(dataset, work, data_root=data_root, synthetic=synthetic)
    protocol_ = protocol_spec(protocol, protocol_options)
    extraction = {**EXTRACTION, **(extraction or {})}
    metas, scores = [], []
    for spec in checkpoints:
        meta = checkpoint_summary(resolve_checkpoint(spec, work, training=training, training_set=training_set,
                                                     progress=progress), spec)
        stored = extract_checkpoint(meta["path"], ref, layers=layers, device=device, work=work,
                                    progress=progress, **extraction)
        predictions = {}
        for layer in stored["layers"]:
            layer_gram(stored["store"], layer, device=device)
            for region in ref["regions"]:
                predictions.update(fit_layer_region(stored["store"], ref, layer=layer, region=region,
                                                    protocol=protocol_, splits=range(protocol_["n_splits"])))
        scores.append(score_checkpoint(stored["store"], ref, protocol_, predictions, meta["name"]))
        metas.append(meta)
    return write_outputs(scores, metas, out)
