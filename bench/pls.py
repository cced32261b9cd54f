"""KernelPLS against sklearn's PLSRegression(25, scale=False), side by side in one run.

    .venv/bin/python bench/pls.py --quick          # small sizes, a minute
    .venv/bin/python bench/pls.py                  # n_train=3840, n_test=1280, 256 targets, p in {1000, 100000}

For each feature count p it times
- ours: `KernelPLS(25, solver).fit(X_train, Y).predict(X_test)`, fit alone in brackets. solver
  "auto" takes the primal path at these sizes (256 targets << 3840 samples); "kernel" times the
  Gram path (what fit_scores uses, sharing one Gram over regions and splits);
- sklearn default settings (max_iter=500, tol=1e-6: what Brain-Score runs), when p <= --sklearn-max-p;
- sklearn converged (max_iter=100000, tol=1e-14), when p <= --converged-max-p;
and prints the time ratio and the max prediction difference (relative to the largest centred
prediction). Where sklearn is not run at a p, its time is extrapolated linearly in p from the largest
measured p (sklearn's cost is linear in p at fixed n) and marked "extrapolated".

Times are process CPU seconds (time.process_time), which on a shared machine measure the work
done rather than the wait; run single-threaded (OMP_NUM_THREADS=1) for a like-for-like comparison,
as recorded in bench/RESULTS.md.

Features are planted low-rank (50 latent factors, ReLU-like offset) plus noise, float32 like stored
activations; targets are a noisy linear map of the latent factors.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.pls import KernelPLS  # noqa: E402


def make_data(n: int, p: int, q: int, seed: int = 0, block: int = 8192):
    """X (n, p) float32, Y (n, q) float64, generated in column blocks to bound memory."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 50))
    X = np.empty((n, p), dtype=np.float32)
    for lo in range(0, p, block):
        hi = min(lo + block, p)
        X[:, lo:hi] = np.maximum(latent @ rng.normal(size=(50, hi - lo)), 0) + 0.5 * rng.normal(size=(n, hi - lo))
    Y = latent @ rng.normal(size=(50, q)) + 2.0 * rng.normal(size=(n, q))
    return X, Y


def ours(X, Y, n_train, solver="auto"):
    """KernelPLS through the sklearn API. Returns (predictions, fit + predict seconds, fit seconds)."""
    start = time.process_time()
    model = KernelPLS(25, solver=solver).fit(X[:n_train], Y[:n_train])
    t_fit = time.process_time() - start
    pred = model.predict(X[n_train:])
    return pred, time.process_time() - start, t_fit


def sklearn_fit(X, Y, n_train, converged):
    from sklearn.cross_decomposition import PLSRegression

    kwargs = dict(max_iter=100000, tol=1e-14) if converged else {}
    start = time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = PLSRegression(25, scale=False, **kwargs).fit(X[:n_train], Y[:n_train])
    pred = model.predict(X[n_train:])
    return pred, time.process_time() - start


def relative(a, b, y_train):
    return float(np.abs(a - b).max() / np.abs(b - y_train.mean(axis=0)).max())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="n_train=768, n_test=256, 64 targets, p in {500, 5000}")
    parser.add_argument("--n-train", type=int, default=3840)
    parser.add_argument("--n-test", type=int, default=1280)
    parser.add_argument("--targets", type=int, default=256)
    parser.add_argument("--p", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--sklearn-max-p", type=int, default=10000, help="largest p sklearn default is run at")
    parser.add_argument("--solver", default="auto", choices=["auto", "kernel", "primal"])
    parser.add_argument("--converged-max-p", type=int, default=1000, help="largest p converged sklearn is run at")
    args = parser.parse_args(argv)
    if args.quick:
        args.n_train, args.n_test, args.targets, args.p = 768, 256, 64, [500, 5000]
        args.sklearn_max_p, args.converged_max_p = 5000, 500
    n = args.n_train + args.n_test
    print(f"solver={args.solver} n_train={args.n_train} n_test={args.n_test} targets={args.targets} threads="
          f"{os.environ.get('OMP_NUM_THREADS', 'all')} cores={os.cpu_count()}")
    print("| p | ours s (fit s) | sklearn default s | ratio default/ours | sklearn converged s "
          "| ours vs converged | default vs converged |")
    print("|---|---|---|---|---|---|---|")
    warm_X, warm_Y = make_data(64, 100, 4)
    ours(warm_X, warm_Y, 48)  # imports (torch, dask) and thread pools start outside the timings
    per_feature = None  # sklearn default seconds per feature, from the largest measured p
    for p in args.p:
        X, Y = make_data(n, p, args.targets)
        pred, t_ours, t_fit = ours(X, Y, args.n_train, args.solver)
        cells = [f"{p}", f"{t_ours:.2f} ({t_fit:.2f})"]
        default = converged = None
        if p <= args.sklearn_max_p:
            default, t_default = sklearn_fit(X, Y, args.n_train, converged=False)
            per_feature = t_default / p
            cells += [f"{t_default:.1f}", f"{t_default / t_ours:.1f}x"]
        elif per_feature is not None:
            t_default = per_feature * p
            cells += [f"~{t_default:.0f} (extrapolated)", f"~{t_default / t_ours:.0f}x (extrapolated)"]
        else:
            cells += ["not run", "-"]
        if p <= args.converged_max_p:
            converged, t_conv = sklearn_fit(X, Y, args.n_train, converged=True)
            cells += [f"{t_conv:.1f}", f"{relative(pred, converged, Y[:args.n_train]):.1e}",
                      f"{relative(default, converged, Y[:args.n_train]):.1e}" if default is not None else "-"]
        else:
            cells += ["not run", "-", "-"]
        print("| " + " | ".join(cells) + " |", flush=True)
        del X


if __name__ == "__main__":
    main()
