"""The two regressions of the `brainscore` protocol side by side: exact PLS against sklearn's default tolerance.

    .venv/bin/python bench/brainscore_regression.py                    # 1280 x 2000 features -> 168 sites
    .venv/bin/python bench/brainscore_regression.py --quick            # 320 x 500 -> 40, seconds
    .venv/bin/python bench/brainscore_regression.py --brainscore-python /path/to/venv/bin/python

Runs `pipeline.fit_scores(..., protocol="brainscore")` twice on the same planted data: with the default
regression `pls` (exact NIPALS, equal to sklearn's PLSRegression run to convergence) and with
`pls-sklearn-default` (sklearn's `PLSRegression(25, scale=False)` with tol=1e-6, max_iter=500, as
Brain-Score calls it), and prints how far apart the per-site test correlations, the centre (mean over
splits of the median over sites), its error, and the ceiled score r^2/c land. The ceiling does not depend on
the regression.

With --brainscore-python (an interpreter where brainscore_vision is installed), the same arrays are written
to a temporary .npz and scored by Brain-Score's own CrossRegressedCorrelation(pls), InternalConsistency and
explained_variance through bench/brainscore_reference.py; the differences to both regressions are printed.

Planted data: 64 objects x (n / 64) images (fewer objects below 1280 stimuli), latent factors -> ReLU-like float32 features; site responses a
noisy linear map of the latent factors plus per-site trial noise over 28 repetitions; stimulus ids are
unsorted hashes and every table is in its own shuffled order.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import xarray as xr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.score import fit_scores  # noqa: E402

HERE = Path(__file__).resolve().parent


def make_case(n: int, p: int, n_sites: int, reps: int = 28, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    n_objects = 64 if n >= 1280 else max(n // 20, 2)  # a 10% test set needs one image per object
    ids = np.array([f"{value:040x}"[-40:] for value in rng.integers(0, 2 ** 63, size=n)])
    objects = np.repeat([f"object{o:02d}" for o in range(n_objects)], int(np.ceil(n / n_objects)))[:n]
    latent = rng.normal(size=(n, 50))
    features = (np.maximum(latent @ rng.normal(size=(50, p)), 0) + 0.5 * rng.normal(size=(n, p))).astype(np.float32)
    signal = latent @ rng.normal(size=(50, n_sites)) * 0.15 + rng.normal(size=(n, n_sites))
    noise = rng.uniform(2.0, 8.0, size=n_sites)
    trials = signal[:, None, :] + noise * rng.normal(size=(n, reps, n_sites))
    order = rng.permutation(n * reps)
    return {"features": features, "ids": ids, "objects": objects, "values": trials.reshape(n * reps, n_sites)[order],
            "trial_ids": np.repeat(ids, reps)[order], "repetition": np.tile(np.arange(reps), n)[order],
            "trial_objects": np.repeat(objects, reps)[order],
            "neuroid_id": np.array([f"IT_site{j:03d}" for j in range(n_sites)]), "region": np.array(["IT"] * n_sites)}


def assemblies(case: dict):
    trials = xr.DataArray(case["values"], dims=("presentation", "neuroid"), coords={
        "stimulus_id": ("presentation", case["trial_ids"]), "repetition": ("presentation", case["repetition"]),
        "neuroid_id": ("neuroid", case["neuroid_id"]), "region": ("neuroid", case["region"])})
    table = np.random.default_rng(1).permutation(len(case["ids"]))
    row_of = {sid: i for i, sid in enumerate(case["ids"][table])}
    index = np.array([row_of[sid] for sid in case["trial_ids"]])
    means = np.zeros((len(table), case["values"].shape[1]))
    np.add.at(means, index, case["values"])
    means /= np.bincount(index)[:, None]
    averaged = xr.DataArray(means, dims=("presentation", "neuroid"), coords={
        "stimulus_id": ("presentation", case["ids"][table]), "object_name": ("presentation", case["objects"][table]),
        "neuroid_id": ("neuroid", case["neuroid_id"]), "region": ("neuroid", case["region"])})
    return averaged, trials


def project_scores(case: dict, regression: str) -> tuple[dict, float]:
    averaged, trials = assemblies(case)
    start = time.perf_counter()
    res = fit_scores({"L": case["features"]}, averaged, protocol="brainscore", stimulus_ids=list(case["ids"]),
                     trials=trials, regression=regression)
    seconds = time.perf_counter() - start
    sel = dict(checkpoint="model", layer="L", region="IT")
    out = {"raw": float(res["median_r"].sel(**sel)), "error": float(res["sem"].sel(**sel)),
           "ceiling": float(res["ceiling"].sel(region="IT")), "ceiling_error": float(res["ceiling_error"].sel(region="IT")),
           "ceiled": float(res["ceiled"].sel(**sel)),
           "neuroid_id": [str(n) for n in res["neuroid_id"].values],
           "r": res["r"].sel(checkpoint="model", layer="L").values}
    return out, seconds


def brainscore_scores(case: dict, python: str) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        arrays = Path(folder) / "case.npz"
        np.savez(arrays, features=case["features"], feature_ids=case["ids"], trials=case["values"],
                 trial_stimulus=case["trial_ids"], trial_repetition=case["repetition"],
                 trial_object=case["trial_objects"], neuroid_id=case["neuroid_id"], region=case["region"],
                 n_components=25)
        result = Path(folder) / "brainscore.json"
        subprocess.run([python, str(HERE / "brainscore_reference.py"), str(arrays), str(result)], check=True,
                       stderr=subprocess.DEVNULL)
        out = json.loads(result.read_text())["IT"]
    out["r"] = np.array(out.pop("raw_values"), dtype=float)
    out["neuroid_id"] = out.pop("raw_neuroid")
    return out


def site_r(scores: dict, order: list[str]) -> np.ndarray:
    position = {site: i for i, site in enumerate(scores["neuroid_id"])}
    return scores["r"][:, [position[site] for site in order]]


def differences(a: dict, b: dict) -> dict:
    order = list(a["neuroid_id"])
    r_diff = np.abs(site_r(a, order) - site_r(b, order))
    return {"per-site r, max abs. diff": float(np.nanmax(r_diff)), "per-site r, median abs. diff": float(np.nanmedian(r_diff)),
            **{f"{name} abs. diff": abs(a[name] - b[name]) for name in ("raw", "error", "ceiling", "ceiled")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1280, help="stimuli")
    parser.add_argument("--p", type=int, default=2000, help="features")
    parser.add_argument("--sites", type=int, default=168, help="IT sites")
    parser.add_argument("--quick", action="store_true", help="320 stimuli, 500 features, 40 sites")
    parser.add_argument("--brainscore-python", default=None, metavar="PYTHON",
                        help="an interpreter with brainscore_vision installed, to score the same arrays with it")
    args = parser.parse_args()
    n, p, sites = (320, 500, 40) if args.quick else (args.n, args.p, args.sites)
    case = make_case(n, p, sites)
    print(f"case: {n} stimuli x {p} features -> {sites} IT sites, 28 repetitions, protocol brainscore, 25 components; "
          f"threads: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    exact, t_exact = project_scores(case, "pls")
    default, t_default = project_scores(case, "pls-sklearn-default")
    print("\n| number | pls (exact, default) | pls-sklearn-default | abs. difference |")
    print("|---|---|---|---|")
    for name in ("raw", "error", "ceiling", "ceiling_error", "ceiled"):
        print(f"| {name} | {exact[name]:.8f} | {default[name]:.8f} | {abs(exact[name] - default[name]):.1e} |")
    diff = differences(exact, default)
    print(f"| per-site r, max abs. diff over 10 splits x {sites} sites | | | {diff['per-site r, max abs. diff']:.1e} |")
    print(f"| per-site r, median abs. diff | | | {diff['per-site r, median abs. diff']:.1e} |")
    print(f"\nwall seconds: pls {t_exact:.1f}, pls-sklearn-default {t_default:.1f}")
    if args.brainscore_python:
        reference = brainscore_scores(case, args.brainscore_python)
        print("\nBrain-Score's own code on the same arrays (raw, error, ceiling, ceiled):",
              ", ".join(f"{reference[k]:.8f}" for k in ("raw", "error", "ceiling", "ceiled")))
        for label, scores in (("pls", exact), ("pls-sklearn-default", default)):
            print(f"{label} vs Brain-Score: " + ", ".join(f"{k} {v:.1e}" for k, v in differences(scores, reference).items()))


if __name__ == "__main__":
    main()
