"""Repetition averaging of a MajajHong2015-sized trial assembly: neural_data against xarray's groupby.

    .venv/bin/python bench/neural_data_averaging.py                 # 5120 stimuli x 28 reps x 256 sites
    .venv/bin/python bench/neural_data_averaging.py --stimuli 640   # smaller

Both compute the NaN-aware mean over the repetitions of each stimulus (1 % of trials NaN, presentations
shuffled). The reference is `assembly.groupby("stimulus_id").mean("presentation")` (xarray's own
NaN-skipping mean); the two are run alternately, the median time of each is printed with their ratio and
the largest difference between results, and a section is appended to bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import datetime as dt
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd

from neural_data.schema import average_repetitions, make_assembly


def build(n_stimuli: int, reps: int, n_sites: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = np.array([f"s{i:05d}" for i in range(n_stimuli)])
    order = rng.permutation(n_stimuli * reps)
    stimulus_ids = np.repeat(ids, reps)[order]
    repetitions = np.tile(np.arange(reps), n_stimuli)[order]
    values = rng.normal(size=(n_stimuli * reps, n_sites)).astype(np.float32)
    values[rng.random(values.shape) < 0.01] = np.nan
    sites = pd.DataFrame({"neuroid_id": [f"n{j}" for j in range(n_sites)], "region": "IT"})
    return make_assembly(values, stimulus_ids, repetitions, sites), list(ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stimuli", type=int, default=5120)
    parser.add_argument("--reps", type=int, default=28)
    parser.add_argument("--sites", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-record", action="store_true", help="do not append to bench/RESULTS.md")
    args = parser.parse_args()

    assembly, ids = build(args.stimuli, args.reps, args.sites)
    ours_times, reference_times = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        ours = average_repetitions(assembly, ids)
        ours_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        reference = assembly.groupby("stimulus_id").mean("presentation", skipna=True)
        reference_times.append(time.perf_counter() - start)
    reference = reference.sel(stimulus_id=ids).transpose("stimulus_id", "neuroid").values
    difference = float(np.nanmax(np.abs(ours.values.astype(np.float64) - reference)))
    ours_s, reference_s = statistics.median(ours_times), statistics.median(reference_times)
    lines = [
        f"shape: {args.stimuli} stimuli x {args.reps} reps x {args.sites} sites, 1% NaN, shuffled presentations",
        f"neural_data.average_repetitions: {ours_s:.3f} s (median of {args.repeats})",
        f"xarray groupby().mean(skipna):   {reference_s:.3f} s",
        f"ratio reference / ours: {reference_s / ours_s:.2f}x; max |difference| {difference:.2e}",
    ]
    print("\n".join(lines))
    if not args.no_record:
        results = Path(__file__).with_name("RESULTS.md")
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        with results.open("a") as handle:
            handle.write(f"\n## neural_data: repetition averaging ({stamp}, {platform.machine()}, "
                         f"{platform.python_version()})\n\n" + "\n".join(f"- {line}" for line in lines) + "\n")


if __name__ == "__main__":
    main()
