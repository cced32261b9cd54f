"""A synthetic dataset shaped like MajajHong2015 whose answer is known.

Images: the HvM design (64 objects, 8 categories, the real per-image pose, position, scale and background
index of variations 3 and 6, from `resources/hvm_meta.csv.gz`) drawn by `render.Renderer`.

Responses come from a hidden feature model through a known linear map plus trial noise:
- hidden features F (n_images, 25): 12 low-level ones (local oriented energy of the image, pooled on a
  3x3 grid, log-compressed, projected by a fixed random matrix) and 13 high-level ones (an object
  embedding: category centroid + object offset); every column z-scored over the images;
- V4-like sites weight mostly the low-level features, IT-like sites mostly the high-level ones;
- site j's signal s_j = F w_j, scaled to unit variance over the images; trial r = b_j + s_j + sigma_j e
  with e ~ N(0, 1), sigma_j set so that site j's reliability hits a drawn target.

Known answers written to truth.json, per site and as the per-region median:
- predictivity of the hidden model: the expected Pearson r between s_j and the repetition-averaged
  response, sqrt(v / (v + sigma^2 / R)) with v = var(s_j) = 1;
- noise ceiling: the Spearman-Brown-corrected expected split-half correlation, halves of floor(R/2) and
  ceil(R/2) repetitions: rho = v / sqrt((v + sigma^2/a)(v + sigma^2/b)), ceiling = 2 rho / (1 + rho).

With k = 25 features, a 25-component PLS (= least squares here) fitted on `hidden_features.npy` (in stimuli.csv order) recovers the
planted predictivity up to its small estimation shrinkage (about k / n_train of the noise variance).
"""
from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from .render import Renderer

GENERATOR_VERSION = 1
N_LOW, N_HIGH = 12, 13  # k = 25: a 25-component PLS on these features is ordinary least squares
V4_FRACTION = 88 / 256  # as in MajajHong2015 after dropping unreliable sites
RELIABILITY_RANGE = (0.85, 0.97)  # targets for the per-site predictivity of the hidden model
CROSS_WEIGHT = 0.3  # how much a V4-like site reads high-level features (and IT-like low-level)
FEATURE_SEED = 4  # fixed: the hidden model is the same for every dataset; only the sites change
ANALYSIS_SIZE = 32  # low-level features are computed at this resolution, whatever the image size
POOL_GRID = 3
ORIENTATIONS = 4
MAX_IMAGES = 5120  # variations 3 and 6 of HvM


def hvm_metadata() -> pd.DataFrame:
    """The packaged HvM metadata table (5760 rows; see resources/README.md)."""
    data = resources.files("neural_data").joinpath("resources/hvm_meta.csv.gz").read_bytes()
    return pd.read_csv(io.BytesIO(gzip.decompress(data)))


def categories_and_objects(meta: pd.DataFrame) -> tuple[list[str], dict[str, list[str]]]:
    categories = sorted(meta["category_name"].unique())
    objects = {c: sorted(meta.loc[meta["category_name"] == c, "object_name"].unique()) for c in categories}
    return categories, objects


CATEGORIES = ["Animals", "Boats", "Cars", "Chairs", "Faces", "Fruits", "Planes", "Tables"]  # label order


# ----------------------------------------------------------------------------------------------- images

def select_images(meta: pd.DataFrame, n_images: int, rng: np.random.Generator) -> pd.DataFrame:
    """n_images rows of variations 3 and 6, balanced over categories and over objects within each."""
    pool = meta[meta["variation"].isin([3, 6])]
    if not 8 * 4 <= n_images <= len(pool):
        raise ValueError(f"n_images must be between 32 (4 per category) and {len(pool)}, got {n_images}")
    categories, objects = categories_and_objects(pool)
    per_category = np.full(len(categories), n_images // len(categories))
    per_category[: n_images % len(categories)] += 1
    chosen = []
    for category, quota in zip(categories, per_category):
        queues = [list(rng.permutation(pool.index[pool["object_name"] == name])) for name in objects[category]]
        picked = 0
        while picked < quota:  # round-robin over the category's objects
            for queue in queues:
                if picked < quota and queue:
                    chosen.append(queue.pop())
                    picked += 1
    return pool.loc[sorted(chosen)].reset_index(drop=True)


def _pose(row) -> dict:
    return {key: float(row[key]) for key in ("rxy", "rxz", "ryz", "ty", "tz", "s")}


def render_rows(rows: pd.DataFrame, image_size: int) -> np.ndarray:
    """(n, size, size) uint8 images of the given metadata rows."""
    categories, objects = categories_and_objects(hvm_metadata())
    renderer = Renderer(categories, objects, image_size)
    images = np.empty((len(rows), image_size, image_size), dtype=np.uint8)
    for index, row in enumerate(rows.itertuples(index=False)):
        images[index] = renderer(row.object_name, _pose(row._asdict()), row.background_id)
    return images


# ------------------------------------------------------------------------------------- hidden features

def oriented_energy(images: np.ndarray) -> np.ndarray:
    """(n, ORIENTATIONS * POOL_GRID**2) log local oriented energy, pooled on a grid (V4-like inputs)."""
    small = np.stack([np.asarray(Image.fromarray(image).resize((ANALYSIS_SIZE, ANALYSIS_SIZE), Image.BILINEAR),
                                 dtype=np.float64) for image in images]) / 255.0
    gy, gx = np.gradient(small, axis=(1, 2))
    bounds = np.array([cell[0] for cell in np.array_split(np.arange(ANALYSIS_SIZE), POOL_GRID)])
    cell_sizes = np.diff(np.append(bounds, ANALYSIS_SIZE))
    area = np.outer(cell_sizes, cell_sizes)
    pooled = []
    for theta in np.arange(ORIENTATIONS) * np.pi / ORIENTATIONS:
        energy = (gx * np.cos(theta) + gy * np.sin(theta)) ** 2
        sums = np.add.reduceat(np.add.reduceat(energy, bounds, axis=1), bounds, axis=2)
        pooled.append((sums / area).reshape(len(images), -1))
    return np.log1p(1e3 * np.concatenate(pooled, axis=1))


def _zscore(matrix: np.ndarray) -> np.ndarray:
    std = matrix.std(axis=0)
    return (matrix - matrix.mean(axis=0)) / np.where(std > 0, std, 1.0)


def hidden_features(images: np.ndarray, rows: pd.DataFrame) -> np.ndarray:
    """(n_images, N_LOW + N_HIGH) features of the hidden model: low-level columns first."""
    fixed = np.random.default_rng(FEATURE_SEED)
    energy = _zscore(oriented_energy(images))
    projection = fixed.normal(size=(energy.shape[1], N_LOW)) / np.sqrt(energy.shape[1])
    low = _zscore(energy @ projection)
    categories, objects = categories_and_objects(hvm_metadata())
    centroids = {c: fixed.normal(size=N_HIGH) for c in categories}
    embedding = {name: centroids[c] + 0.7 * fixed.normal(size=N_HIGH) for c in categories for name in objects[c]}
    high = _zscore(np.stack([embedding[name] for name in rows["object_name"]]))
    return np.concatenate([low, high], axis=1)


# ------------------------------------------------------------------------------------------ responses

def site_table(n_sites: int) -> pd.DataFrame:
    n_v4 = int(round(n_sites * V4_FRACTION))
    if n_sites < 2 or n_v4 < 1 or n_v4 >= n_sites:
        raise ValueError(f"n_sites must be >= 3 so that V4 and IT both get sites, got {n_sites}")
    regions = ["V4"] * n_v4 + ["IT"] * (n_sites - n_v4)
    ids = [f"synth_{region}_{index:03d}" for index, region in enumerate(regions)]
    return pd.DataFrame({"neuroid_id": ids, "region": regions, "animal": "synthetic"})


def planted_sites(features: np.ndarray, sites: pd.DataFrame, reps: int, rng: np.random.Generator):
    """Signals (n_sites, n_images) with unit variance, noise sd (n_sites,), baselines (n_sites,)."""
    n_sites = len(sites)
    weights = rng.normal(size=(features.shape[1], n_sites))
    is_v4 = (sites["region"] == "V4").to_numpy()
    weights[:N_LOW, ~is_v4] *= CROSS_WEIGHT
    weights[N_LOW:, is_v4] *= CROSS_WEIGHT
    signal = (features @ weights).T
    signal = (signal - signal.mean(axis=1, keepdims=True)) / signal.std(axis=1, keepdims=True)
    target = rng.uniform(*RELIABILITY_RANGE, size=n_sites)
    noise_sd = np.sqrt(reps * (1.0 / target**2 - 1.0))  # var(mean of R trials) = sigma^2 / R
    baseline = rng.uniform(0.5, 1.5, size=n_sites)
    return signal, noise_sd, baseline


def expected_predictivity(noise_sd: np.ndarray, reps: int, signal_var: float = 1.0) -> np.ndarray:
    return np.sqrt(signal_var / (signal_var + noise_sd**2 / reps))


def expected_noise_ceiling(noise_sd: np.ndarray, reps: int, signal_var: float = 1.0) -> np.ndarray:
    half_a, half_b = reps // 2, reps - reps // 2
    rho = signal_var / np.sqrt((signal_var + noise_sd**2 / half_a) * (signal_var + noise_sd**2 / half_b))
    return 2 * rho / (1 + rho)


def truth_record(sites: pd.DataFrame, noise_sd: np.ndarray, reps: int, settings: dict) -> dict:
    predictivity = expected_predictivity(noise_sd, reps)
    ceiling = expected_noise_ceiling(noise_sd, reps)
    regions = {}
    for region in dict.fromkeys(sites["region"]):
        mask = (sites["region"] == region).to_numpy()
        regions[region] = {"n_sites": int(mask.sum()),
                           "noise_ceiling": float(np.median(ceiling[mask])),
                           "predictivity": float(np.median(predictivity[mask]))}
    return {
        "generator": "neural_data.synth", "generator_version": GENERATOR_VERSION, "settings": settings,
        "regions": regions,
        "definitions": {
            "predictivity": "per-site expected Pearson r between the noiseless signal and the mean over "
                            "repetitions, sqrt(v / (v + sigma^2 / R)), v = 1; region value = median over sites",
            "noise_ceiling": "per-site Spearman-Brown-corrected expected split-half correlation (halves of "
                             "floor(R/2) and ceil(R/2) repetitions); region value = median over sites",
        },
        "hidden_features": {"file": "hidden_features.npy", "low_level_columns": list(range(N_LOW)),
                            "high_level_columns": list(range(N_LOW, N_LOW + N_HIGH))},
        "sites": {"neuroid_id": sites["neuroid_id"].tolist(), "region": sites["region"].tolist(),
                  "predictivity": [float(x) for x in predictivity],
                  "noise_ceiling": [float(x) for x in ceiling], "noise_sd": [float(x) for x in noise_sd]},
    }


# ------------------------------------------------------------------------------------------- writing

def generate(out_dir: str | os.PathLike, n_images: int = 320, n_sites: int = 40, reps: int = 6, seed: int = 0,
             image_size: int = 64, overwrite: bool = False) -> Path:
    """Write a folder-format synthetic dataset to `out_dir` and return its path.

    Defaults are small and fast on a CPU (320 images = 40 per category, 40 sites, 6 repetitions, 64x64
    pixels); n_images=5120, n_sites=256, image_size=256 gives the full MajajHong2015 shape. The same
    arguments always give byte-identical files.
    """
    if reps < 2:
        raise ValueError(f"reps must be >= 2 (the noise ceiling splits repetitions in halves), got {reps}")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{out_dir}: exists and is not empty (pass overwrite=True to replace it)")
    rng = np.random.default_rng(seed)
    rows = select_images(hvm_metadata(), n_images, rng)
    rows.insert(0, "stimulus_id", [f"synth_{index:04d}" for index in rows["hvm_index"]])
    images = render_rows(rows, image_size)
    features = hidden_features(images, rows)
    sites = site_table(n_sites)
    signal, noise_sd, baseline = planted_sites(features, sites, reps, rng)
    noise = rng.normal(size=(n_sites, len(rows), reps))
    responses = (baseline[:, None, None] + signal[:, :, None] + noise_sd[:, None, None] * noise).astype(np.float32)
    settings = {"n_images": n_images, "n_sites": n_sites, "reps": reps, "seed": seed, "image_size": image_size}

    if out_dir.exists() and overwrite:
        shutil.rmtree(out_dir)
    (out_dir / "images").mkdir(parents=True)
    for stimulus_id, image in zip(rows["stimulus_id"], images):
        Image.fromarray(image, mode="L").save(out_dir / "images" / f"{stimulus_id}.png", format="PNG")
    rows["image_file_name"] = rows["stimulus_id"] + ".png"
    rows.to_csv(out_dir / "stimuli.csv", index=False, lineterminator="\n")
    sites.to_csv(out_dir / "neuroids.csv", index=False, lineterminator="\n")
    np.save(out_dir / "responses.npy", responses)
    np.save(out_dir / "hidden_features.npy", features)
    (out_dir / "truth.json").write_text(json.dumps(truth_record(sites, noise_sd, reps, settings), indent=1) + "\n")
    (out_dir / "dataset.toml").write_text(_manifest(settings))
    return out_dir


def _manifest(settings: dict) -> str:
    text = ", ".join(f"{k}={v}" for k, v in settings.items())
    return (f'name = "synthetic"\n'
            f'description = "Synthetic MajajHong2015-shaped dataset with planted answers ({text})"\n'
            f'citation = "neuralign synthetic generator v{GENERATOR_VERSION}; image metadata from HvM '
            f'(Majaj, Hong et al. 2015) via Brain-Score (MIT)"\n'
            f'stimulus_id_column = "stimulus_id"\n'
            f'stratify_by = "category_name"\n'
            f'regions = ["V4", "IT"]\n'
            f'time_window_ms = [70, 170]\n'
            f'responses = "responses.npy"\n'
            f'images = "images"\n')


def cached(n_images: int = 320, n_sites: int = 40, reps: int = 6, seed: int = 0, image_size: int = 64,
           cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of a generated dataset in the cache, generating it (atomically) on first use.

    Cache root: `cache_dir`, else `$NEURALIGN_CACHE/datasets`, else `./work/datasets`.
    """
    root = Path(cache_dir) if cache_dir else (
        Path(os.environ["NEURALIGN_CACHE"]) / "datasets" if os.environ.get("NEURALIGN_CACHE") else Path("work/datasets"))
    name = f"synthetic-v{GENERATOR_VERSION}-i{n_images}-n{n_sites}-r{reps}-p{image_size}-s{seed}"
    target = root / name
    if (target / "dataset.toml").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        generate(staging / "dataset", n_images=n_images, n_sites=n_sites, reps=reps, seed=seed, image_size=image_size)
        try:
            os.replace(staging / "dataset", target)
        except OSError:
            if not (target / "dataset.toml").is_file():  # lost a race to another writer: theirs is identical
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


# ------------------------------------------------------------------------------------- training images

POSE_KEYS = ("rxy", "rxz", "ryz", "ty", "tz", "s")
TRAINING_POSES = ("hvm", "uniform")
# What training_set renders by default: 1 = uniform variation-6 poses (now poses="uniform"), 2 = HvM poses.
# For content keys of anything trained on these images (the same arguments gave other images in 1).
TRAINING_SET_VERSION = 2
# Background ids of training images: ones the HvM table (0..3464) never uses, drawn from a range wide enough
# that a training set and its held-out set (another seed) share almost none.
TRAINING_BACKGROUNDS = (100_000, 2**31 - 1)


def training_set(n_per_class: int, image_size: int = 64, seed: int = 0, *, poses: str = "hvm",
                 variations: tuple[int, ...] = (3, 6), return_table: bool = False):
    """Labelled images of the same 64 objects in new poses on new backgrounds, for small CPU training runs.

    Returns images (8 * n_per_class, size, size) uint8 and labels (same length,) int64 indexing
    `CATEGORIES`, in random order, `n_per_class` of each category, each image of an object of its category
    drawn at random. The same arguments always give the same arrays; another seed gives other images (the
    held-out set of `flows.checkpoints` is seed + 1). With `return_table` also a DataFrame, one row per
    image: object_name, category_name, label, variation, the pose (rxy, rxz, ryz, ty, tz, s), background_id.

    poses: how a pose is drawn.
      "hvm" (default): as in the HvM images the neural datasets show. Each image gets a variation level from
        `variations` (MajajHong2015's are 3 and 6) and each of rxy, rxz, ryz, ty, tz, s independently from
        that level's values in the HvM table: the per-level distribution of every parameter, in combinations
        no HvM image has.
      "uniform": the first version's images (byte for byte): each parameter uniform over the variation-6
        range (scale log-uniform). They show many more mirrored and strongly foreshortened views than HvM
        (|ryz| up to 170 degrees at any rate), hence smaller objects, which small networks learn slowly.
    """
    if n_per_class < 1:
        raise ValueError(f"n_per_class must be >= 1, got {n_per_class}")
    if poses not in TRAINING_POSES:
        raise ValueError(f"poses must be one of {', '.join(TRAINING_POSES)}, got {poses!r}")
    meta = hvm_metadata()
    categories, objects = categories_and_objects(meta)
    renderer = Renderer(categories, objects, image_size)
    if poses == "uniform":
        images, table = _uniform_pose_set(renderer, categories, objects, n_per_class, image_size, seed)
    else:
        table = training_table(n_per_class, seed, variations, meta)
        images = np.empty((len(table), image_size, image_size), dtype=np.uint8)
        pose_values = table[list(POSE_KEYS)].to_numpy(dtype=np.float64)
        for index, (name, background_id) in enumerate(zip(table["object_name"], table["background_id"])):
            images[index] = renderer(name, dict(zip(POSE_KEYS, pose_values[index].tolist())), int(background_id))
    labels = np.array(table["label"], dtype=np.int64)  # a writable copy (pandas may hand out read-only views)
    return (images, labels, table) if return_table else (images, labels)


def training_table(n_per_class: int, seed: int = 0, variations: tuple[int, ...] = (3, 6),
                   meta: pd.DataFrame | None = None) -> pd.DataFrame:
    """What `training_set(..., poses="hvm")` renders, one row per image in its order (see there)."""
    meta = hvm_metadata() if meta is None else meta
    categories, objects = categories_and_objects(meta)
    levels = tuple(int(v) for v in variations)
    if not levels:
        raise ValueError("variations must name at least one HvM variation level, e.g. (3, 6)")
    values = {}
    for level in levels:
        rows = meta.loc[meta["variation"] == level, list(POSE_KEYS)]
        if rows.empty:
            valid = sorted(int(v) for v in meta["variation"].unique())
            raise ValueError(f"variations: HvM has no images of variation {level} (levels: {valid})")
        values[level] = rows.to_numpy(dtype=np.float64)
    rng = np.random.default_rng([seed, 11])
    n = len(categories) * n_per_class
    labels = np.repeat(np.arange(len(categories)), n_per_class)[rng.permutation(n)]
    n_objects = np.array([len(objects[c]) for c in categories])
    object_index = (rng.random(n) * n_objects[labels]).astype(np.int64)
    level_index = rng.integers(len(levels), size=n)
    picks = rng.random((n, len(POSE_KEYS)))
    background_ids = rng.integers(*TRAINING_BACKGROUNDS, size=n)
    pose = np.empty((n, len(POSE_KEYS)))
    for index, level in enumerate(levels):
        mask = level_index == index
        table = values[level]
        rows = (picks[mask] * len(table)).astype(np.int64)  # each parameter from its own random HvM image
        pose[mask] = table[rows, np.arange(len(POSE_KEYS))]
    table = pd.DataFrame({
        "object_name": [objects[categories[label]][k] for label, k in zip(labels, object_index)],
        "category_name": [categories[label] for label in labels],
        "label": labels.astype(np.int64),
        "variation": np.asarray(levels, dtype=np.int64)[level_index],
        **{key: pose[:, column] for column, key in enumerate(POSE_KEYS)},
        "background_id": background_ids.astype(np.int64),
    })
    return table


def _uniform_pose_set(renderer, categories, objects, n_per_class: int, image_size: int, seed: int):
    """The first version's training images (byte for byte): poses uniform over the variation-6 ranges."""
    rng = np.random.default_rng([seed, 7])
    labels = np.repeat(np.arange(len(categories)), n_per_class)
    labels = labels[rng.permutation(labels.size)]
    images = np.empty((labels.size, image_size, image_size), dtype=np.uint8)
    rows = []
    for index, label in enumerate(labels):
        name = objects[categories[label]][rng.integers(len(objects[categories[label]]))]
        pose = {"rxy": rng.uniform(-90, 90), "rxz": rng.uniform(-90, 90), "ryz": rng.uniform(-170, 170),
                "ty": rng.uniform(-0.6, 0.6), "tz": rng.uniform(-1.2, 1.2), "s": float(np.exp(rng.uniform(np.log(0.625), np.log(1.6))))}
        background_id = 100_000 + int(rng.integers(1_000_000))
        images[index] = renderer(name, pose, background_id)
        rows.append({"object_name": name, "category_name": categories[label], "label": int(label), "variation": 6,
                     **{key: float(pose[key]) for key in POSE_KEYS}, "background_id": background_id})
    return images, pd.DataFrame(rows)
