"""The demo's networks, measured: the seven rules of `neural-fit/default` trained exactly as the deployment
trains them, then bp, sa and the untrained baseline fitted to the demo's synthetic dataset.

    .venv/bin/python bench/demo_training.py                       # 2 worker processes x 1 thread (the flow's)
    .venv/bin/python bench/demo_training.py --workers 1 --threads 2
    .venv/bin/python bench/demo_training.py --rules bp,sa,kp --skip-fits [--seed 1]   # quicker; another draw

Training: every rule of `flows.serve.DEMO_RULES` goes through `flows.checkpoints.train_builtin(config, work,
DEMO_TRAINING_SET)` with `config = training_config(rule, DEMO_TRAINING)`, into a temporary work folder. By
default two worker processes with one torch thread each take the rules in order as they come free, as the
neural-fit flow's local Dask cluster does (`os.cpu_count()` one-threaded workers; each renders the training
images once). Per rule: held-out top-1/top-5 (the trainer's own evaluation after the last epoch, on the
renders of seed + 1), top-1 on the demo dataset's own images (category labels; not seen in training),
seconds (rendering counted in the first rule of each worker), and the total wall time of training.

Fits: bp, sa and `DEMO_RANDOM` (resolved by `flows.checkpoints.resolve`, i.e. `models.random_init`) are
extracted with `pipeline.extract.extract` (default layers) at the checkpoint's image size and scored with
`pipeline.score.fit_scores(..., protocol="paper", trials=<trial-level assembly>)` on the demo's dataset
(`neural_data.synth.cached(**DEMO_DATASET)`). Prints each one's best-layer median r for IT and V4, and the
per-site IT difference bp - random (each at its own best IT layer): its median over sites and the share of
sites where bp is higher. `DEMO_RANDOM` carries the trained networks' input size (`image_size=40`), so every
network is compared at the same size.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def train_rule(rule: str, work: str, training: dict, training_set: dict) -> dict:
    """Train one demo rule as the deployment does; runs in a worker process."""
    import torch

    from flows import checkpoints
    from models.checkpoint import checkpoint_metadata

    started, cpu = time.perf_counter(), time.process_time()
    config = checkpoints.training_config(rule, training)
    checkpoints.synthetic_training_set(config.image_size, training_set)  # rendered once per process
    rendered = time.perf_counter()
    path = checkpoints.train_builtin(config, Path(work), training_set)
    meta = checkpoint_metadata(path)
    return {"rule": rule, "path": str(path), "top1": meta.get("top1"), "top5": meta.get("top5"),
            "status": meta.get("status"), "render_s": rendered - started, "train_s": time.perf_counter() - rendered,
            "seconds": time.perf_counter() - started, "cpu_s": time.process_time() - cpu,
            "threads": torch.get_num_threads(), "pid": os.getpid()}


def train_all(rules: list[str], work: Path, workers: int, threads: int, training: dict,
              training_set: dict) -> tuple[list[dict], float]:
    started = time.perf_counter()
    arguments = ([str(work)] * len(rules), [training] * len(rules), [training_set] * len(rules))
    if workers <= 1:
        _init_worker(threads)
        results = list(map(train_rule, rules, *arguments))
    else:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker,
                                 initargs=(threads,)) as pool:
            results = list(pool.map(train_rule, rules, *arguments))
    return results, time.perf_counter() - started


def dataset_accuracy(model, dataset, image_size: int) -> float:
    """Top-1 category accuracy of a trained network on the neural dataset's own images."""
    import numpy as np
    import torch

    from models.data import ArrayDataset
    from neural_data.synth import CATEGORIES

    table = dataset.stimuli.table.set_index("stimulus_id")
    ids = list(dataset.stimuli.stimulus_ids)
    images = np.stack([np.asarray(dataset.stimuli.open(s).convert("L")) for s in ids])
    labels = np.array([CATEGORIES.index(table.loc[s, "category_name"]) for s in ids])
    data = ArrayDataset(images, labels, image_size=image_size)
    with torch.no_grad():
        predicted = model.eval()(data.images).argmax(1).numpy()
    return float((predicted == labels).mean())


def fit_one(name: str, reference: dict, dataset, work: Path) -> dict:
    from flows import checkpoints
    from pipeline.extract import extract
    from pipeline.score import fit_scores

    size = int(reference["image_size"])
    model = checkpoints.load_model(reference)
    started = time.perf_counter()
    store = extract(model, dataset.stimuli, layers="default", image_size=size, cache_dir=work / "activations",
                    progress=False)
    scores = fit_scores(store, dataset.averaged(), protocol="paper", trials=dataset.assembly, checkpoint=name)
    seconds = time.perf_counter() - started
    best = {str(region): (str(layer), float(value)) for region, layer, value in
            zip(scores["region"].values, scores["best_layer"].values[0], scores["best_median_r"].values[0])}
    it_layer = best["IT"][0]
    site_r = scores["site_r"].sel(checkpoint=name, layer=it_layer)
    it_sites = site_r.where(site_r["neuroid_region"] == "IT", drop=True)
    return {"name": name, "image_size": size, "best": best, "it_sites": it_sites.values,
            "it_site_ids": [str(s) for s in it_sites["neuroid_id"].values], "seconds": seconds,
            "dataset_top1": (dataset_accuracy(model, dataset, size) if reference["kind"] != "random" else None)}


def fits(results: list[dict], work: Path) -> list[dict]:
    import numpy as np

    import neural_data
    from flows import checkpoints
    from flows.serve import DEMO_DATASET, DEMO_RANDOM
    from neural_data import synth

    dataset = neural_data.load(str(synth.cached(**DEMO_DATASET, cache_dir=work / "datasets")))
    by_rule = {r["rule"]: r for r in results}
    rows = []
    for rule in ("bp", "sa"):
        if rule in by_rule:
            rows.append(fit_one(rule, checkpoints.resolve(by_rule[rule]["path"]), dataset, work))
    random_reference = checkpoints.resolve(DEMO_RANDOM, work)
    rows.append(fit_one("random", random_reference, dataset, work))
    trained = {row["name"]: row for row in rows}
    for row in rows:
        if row["name"] == "random" and "bp" in trained:
            assert row["it_site_ids"] == trained["bp"]["it_site_ids"]
            diff = trained["bp"]["it_sites"] - row["it_sites"]
            row["bp_minus"] = {"median": float(np.median(diff)), "share_positive": float(np.mean(diff > 0)),
                               "n_sites": int(diff.size)}
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rules", default=None, help="comma-separated (default: the demo's seven, DEMO_RULES)")
    parser.add_argument("--workers", type=int, default=2, help="training processes (the flow: one per core)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per training process, and of this process's fits")
    parser.add_argument("--seed", type=int, default=None,
                        help="another draw: TrainConfig seed N and training-set seed 10 N (held-out 10 N + 1) "
                             "instead of the demo's 0 and 0")
    parser.add_argument("--skip-fits", action="store_true", help="train only")
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: a temporary one, removed)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    # Before torch starts: what the flow's Dask nanny sets for its one-threaded workers. Two threads on cores
    # that other processes share run many times slower than one (each op waits for its slowest thread).
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = str(args.threads)
    import torch

    from flows.serve import (
        DEMO_DATASET,
        DEMO_RANDOM,
        DEMO_RULES,
        DEMO_TRAINING,
        DEMO_TRAINING_SET,
    )

    torch.set_num_threads(args.threads)
    rules = [r.strip() for r in (args.rules or ",".join(DEMO_RULES)).split(",") if r.strip()]
    training, training_set = dict(DEMO_TRAINING), dict(DEMO_TRAINING_SET)
    if args.seed is not None:
        training["seed"], training_set["seed"] = args.seed, 10 * args.seed
    work = args.work or Path(tempfile.mkdtemp(prefix="demo-training-"))
    print(f"training = {json.dumps(training)}\ntraining_set = {json.dumps(training_set)}\n"
          f"DEMO_DATASET = {json.dumps(DEMO_DATASET)}\nDEMO_RANDOM = {DEMO_RANDOM}\n"
          f"work {work}; {args.workers} worker(s) x {args.threads} thread(s); load {os.getloadavg()}", flush=True)
    try:
        results, wall = train_all(rules, work, args.workers, args.threads, training, training_set)
        print("\n| rule | top-1 | top-5 | status | seconds (render + train) | CPU seconds | worker |\n"
              "|---|---|---|---|---|---|---|")
        workers = {pid: index for index, pid in enumerate(dict.fromkeys(r["pid"] for r in results))}
        for r in results:
            print(f"| {r['rule']} | {r['top1']:.3f} | {r['top5']:.3f} | {r['status']} | "
                  f"{r['seconds']:.0f} ({r['render_s']:.0f} + {r['train_s']:.0f}) | {r['cpu_s']:.0f} | "
                  f"{workers[r['pid']]} |")
        per_worker = {index: sum(r["cpu_s"] for r in results if workers[r["pid"]] == index) for index in workers.values()}
        print(f"training wall {wall:.0f} s ({wall / 60:.1f} min); sum over rules {sum(r['seconds'] for r in results):.0f} s;"
              f" CPU seconds per worker {', '.join(f'{v:.0f}' for v in per_worker.values())}"
              f" (the wall time on idle cores, about); load after {os.getloadavg()}", flush=True)
        summary = {"training": results, "training_wall_s": wall, "load_after_training": os.getloadavg()}
        if not args.skip_fits:
            rows = fits(results, work)
            print("\n| network | input px | IT best layer | IT median r | V4 best layer | V4 median r | "
                  "top-1 on dataset images | IT bp - this, median over sites (share bp higher) | fit s |")
            print("|---|---|---|---|---|---|---|---|---|")
            for row in rows:
                (it_layer, it), (v4_layer, v4) = row["best"]["IT"], row["best"]["V4"]
                diff = row.get("bp_minus")
                diff_text = f"{diff['median']:+.3f} ({diff['share_positive']:.0%} of {diff['n_sites']})" if diff else ""
                top1 = f"{row['dataset_top1']:.3f}" if row["dataset_top1"] is not None else ""
                print(f"| {row['name']} | {row['image_size']} | {it_layer} | {it:.3f} | {v4_layer} | {v4:.3f} | "
                      f"{top1} | {diff_text} | {row['seconds']:.0f} |")
            summary["fits"] = [{k: v for k, v in row.items() if k not in ("it_sites", "it_site_ids")} for row in rows]
        if args.json:
            args.json.write_text(json.dumps(summary, indent=1, default=str) + "\n")
        return summary
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
