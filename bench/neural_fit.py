"""End-to-end neural fit of a full-width ResNet-18: Gram-first extraction -> 240 PLS fits, timed at several sizes.

    .venv/bin/python bench/neural_fit.py --images 640                              # quick, CPU
    .venv/bin/python bench/neural_fit.py --images 1280,2560,5120 --input-size 224  # the paper's size, scaling
    .venv/bin/python bench/neural_fit.py --images 5120 --input-size 224 --device cuda

For each size (run in its own process, so that peak memory is per size) it prints and records: wall time of
the forward passes and of the Gram products (from the extraction's own timers), the number of forward passes
the memory budget took, the 240 fits (12 default layers x V4/IT x 10 splits, paper protocol), peak RSS (and
peak GPU memory on CUDA), peak disk of the store (Gram matrices only), and achieved FLOP/s as a fraction of a
torch matmul peak measured in the same run, before and after the extraction (the better of the two; float32 for
the forward pass, float64 for the Grams). The
combined figure is (one forward per image at the fp32 peak + the Grams at the fp64 peak) / (time taken):
passes forced by a small budget count against it. With several sizes it fits the scaling exponent of each
stage (log time over log images). The data are neural_data's synthetic MajajHong2015-shaped set (256 sites,
V4 and IT); image files are --image-size px and resized to --input-size for the network, as Brain-Score does.
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def matmul_peak(dtype: torch.dtype, device: torch.device, size: int = 2048, repeats: int = 10) -> float:
    """Best FLOP/s of a square torch matmul (size x size), after one warm-up."""
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def forward_flops(model: torch.nn.Module, input_size: int) -> float:
    """FLOPs of one image's forward pass (convolutions, matmuls), counted by torch on the CPU."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(torch.zeros(1, 3, input_size, input_size))
    return float(counter.get_total_flops())


def peak_rss_gb() -> float:
    """Peak resident set of this process and of its finished children (DataLoader workers), GB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) * 1024 / 1e9


def one_size(args) -> dict:
    """Generate (once), extract cold, fit; everything measured in this process."""
    import models
    import neural_data
    from neural_data import synth
    from pipeline.extract import extract
    from pipeline.gram import resolve_device
    from pipeline.score import fit_scores

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    n = args.images
    data_dir = args.work_dir / f"synth_{n}x{args.sites}_{args.image_size}px"
    if not data_dir.exists():
        synth.generate(data_dir, n_images=n, n_sites=args.sites, reps=args.reps, seed=0, image_size=args.image_size)
    dataset = neural_data.load(data_dir)
    cache_dir = args.work_dir / f"store_{n}"
    shutil.rmtree(cache_dir, ignore_errors=True)  # time a cold extraction, not a cache hit

    peaks_before = matmul_peak(torch.float32, device), matmul_peak(torch.float64, device)
    model, _ = models.random_init("resnet18")
    flops_per_image = forward_flops(model, args.input_size)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    budget = int(args.memory_budget_gb * 2**30) if args.memory_budget_gb else None
    start = time.perf_counter()
    store = extract(model, dataset.stimuli, layers="default", image_size=args.input_size,
                    batch_size=args.batch_size, device=device, cache_dir=cache_dir, num_workers=args.workers,
                    progress=False, memory_budget=budget)
    t_extract = time.perf_counter() - start
    # A shared machine's peak moves over a 20-minute extraction: the reference is the best of a measurement
    # before and one after it (a single short measurement once came out below what the Grams then sustained).
    peaks_after = matmul_peak(torch.float32, device), matmul_peak(torch.float64, device)
    peak32, peak64 = max(peaks_before[0], peaks_after[0]), max(peaks_before[1], peaks_after[1])
    seconds = store.metadata["seconds"]
    disk = sum(path.stat().st_size for path in cache_dir.iterdir() if path.is_file())
    widths = {layer: store.shape(layer)[1] for layer in store.layers}
    gram_flops = sum(2.0 * n * n * width for width in widths.values())
    fwd_flops = flops_per_image * n

    start = time.perf_counter()
    scores = fit_scores(store, dataset.averaged(), protocol="paper", n_splits=args.splits, trials=dataset.assembly)
    t_fit = time.perf_counter() - start
    n_fits = scores.sizes["layer"] * scores.sizes["region"] * scores.sizes["split"]
    return {
        "images": n, "input_size": args.input_size, "sites": args.sites, "device": str(device),
        "threads": torch.get_num_threads(), "layers": len(store.layers), "features": sum(widths.values()),
        "memory_budget_gb": store.metadata["memory_budget"] / 2**30, "forward_passes": store.metadata["forward_passes"],
        "matmul_peak_gflops": {"float32": peak32 / 1e9, "float64": peak64 / 1e9},
        "matmul_peak_before_after_gflops": {"float32": [peaks_before[0] / 1e9, peaks_after[0] / 1e9],
                                            "float64": [peaks_before[1] / 1e9, peaks_after[1] / 1e9]},
        "extract_s": t_extract, "forward_s": seconds["forward"], "gram_s": seconds["gram"],
        "fits": n_fits, "fit_s": t_fit, "wall_s": t_extract + t_fit,
        "forward_gflop": fwd_flops / 1e9, "gram_gflop": gram_flops / 1e9,
        "forward_fraction_of_fp32_peak": fwd_flops / seconds["forward"] / peak32,
        "gram_fraction_of_fp64_peak": gram_flops / seconds["gram"] / peak64,
        "forward_plus_gram_fraction_of_peak": (fwd_flops / peak32 + gram_flops / peak64) / (seconds["forward"]
                                                                                           + seconds["gram"]),
        "peak_rss_gb": peak_rss_gb(),
        "peak_gpu_gb": torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None,
        "store_disk_gb": disk / 1e9,
        "best_median_r": {str(region): round(float(value), 4)
                          for region, value in zip(scores["region"].values, scores["best_median_r"].values[0])},
    }


def exponents(results: list[dict]) -> dict[str, float]:
    """Least-squares slope of log(seconds) over log(images), per stage."""
    if len(results) < 2:
        return {}
    x = [math.log(r["images"]) for r in results]
    out = {}
    for stage in ("forward_s", "gram_s", "fit_s"):
        y = [math.log(r[stage]) for r in results]
        mx, my = sum(x) / len(x), sum(y) / len(y)
        out[stage] = sum((a - mx) * (b - my) for a, b in zip(x, y)) / sum((a - mx) ** 2 for a in x)
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default="640", help="comma-separated sizes, e.g. 1280,2560,5120 (paper: 5120)")
    parser.add_argument("--sites", type=int, default=256, help="synthetic sites, V4 and IT (paper: 256)")
    parser.add_argument("--reps", type=int, default=4, help="repetitions per image")
    parser.add_argument("--image-size", type=int, default=64, help="side of the generated image files")
    parser.add_argument("--input-size", type=int, default=64, help="network input side (paper: 224)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--splits", type=int, default=10)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers decoding images")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default=None, help="cuda / cpu (default: cuda when present)")
    parser.add_argument("--memory-budget-gb", type=float, default=None,
                        help="activations held at once (default: half the device's free memory)")
    parser.add_argument("--work-dir", type=Path, default=ROOT / "work" / "bench_neural_fit")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--one-size", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one_size:
        result = one_size(argparse.Namespace(**{**vars(args), "images": int(args.images)}))
        print(json.dumps(result))
        return result
    results = []
    for size in [int(s) for s in args.images.split(",")]:
        command = [sys.executable, __file__, "--one-size", "--images", str(size)] + _passthrough(args)
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(output.strip().splitlines()[-1]))
        print(json.dumps(results[-1], indent=1), flush=True)
    summary = {"sizes": results, "scaling_exponents": exponents(results)}
    print("scaling exponents (log seconds / log images):", summary["scaling_exponents"])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _passthrough(args) -> list[str]:
    out = []
    for name in ("sites", "reps", "image_size", "input_size", "batch_size", "splits", "workers", "threads",
                 "device", "memory_budget_gb", "work_dir"):
        value = getattr(args, name)
        if value is not None:
            out += [f"--{name.replace('_', '-')}", str(value)]
    return out


if __name__ == "__main__":
    main()
