"""End-to-end neural fit of a ResNet-18: extraction -> Gram matrices -> PLS scores, timed.

    .venv/bin/python bench/neural_fit.py                                  # small CPU size (defaults)
    .venv/bin/python bench/neural_fit.py --images 5120 --image-size 224 --width 1 --input-size 224

Prints wall time per stage, peak RSS, and achieved FLOP/s as a fraction of a torch matmul peak
measured in this same run (float32 for the forward pass, float64 for the Gram matrices, which are
computed in float64). Forward FLOPs come from torch's FlopCounterMode; Gram FLOPs are 2 n^2 f per
layer (a full GEMM). The dataset is neural_data's synthetic generator (both regions, every site).
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def matmul_peak(dtype: torch.dtype, device: torch.device, size: int = 2048, repeats: int = 5) -> float:
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


def forward_flops(model: torch.nn.Module, input_size: int, device: torch.device) -> float:
    """FLOPs of one image's forward pass (convolutions, matmuls), counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    model.eval().to(device)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, input_size, input_size, device=device))
    model.to("cpu")
    return float(counter.get_total_flops())


def plain_forward_seconds(model, stimuli, input_size: int, batch_size: int, device) -> float:
    """The same forward passes without hooks or disk: the reference for extraction overhead."""
    from pipeline.preprocess import Preprocessing, iter_pixel_batches, normalize

    prep = Preprocessing(image_size=input_size)
    batches = [pixels for _, pixels in iter_pixel_batches(stimuli, prep, batch_size)]
    model.eval().to(device)
    start = time.perf_counter()
    with torch.no_grad():
        for pixels in batches:
            model(normalize(pixels.to(device), prep))
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    model.to("cpu")
    return seconds


def peak_rss_gb() -> float:
    """Peak resident set of this process and of its finished children (DataLoader workers), GB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) * 1024 / 1e9


def build_model(width: float):
    try:
        import models

        return models.resnet18(width=width), f"models.resnet18(width={width})"
    except ImportError:
        if width != 1:
            raise SystemExit("--width needs the project's models package; torchvision's ResNet-18 has width 1")
        from torchvision.models import resnet18

        return resnet18(weights=None), "torchvision resnet18"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=640, help="synthetic images (paper: 5120)")
    parser.add_argument("--sites", type=int, default=256, help="synthetic sites, both regions (paper: 256)")
    parser.add_argument("--reps", type=int, default=4, help="repetitions per image")
    parser.add_argument("--image-size", type=int, default=64, help="side of the generated images")
    parser.add_argument("--input-size", type=int, default=64, help="network input side (paper: 224)")
    parser.add_argument("--width", type=float, default=1.0, help="ResNet width multiplier")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--splits", type=int, default=10)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers decoding images")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default=None, help="cuda / cpu (default: cuda when present)")
    parser.add_argument("--work-dir", type=Path, default=ROOT / "work" / "bench_neural_fit")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)

    import neural_data
    from neural_data import synth
    from pipeline.extract import extract, resolve_device

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(0)

    data_dir = args.work_dir / f"synth_{args.images}x{args.sites}_{args.image_size}px"
    if not data_dir.exists():
        synth.generate(data_dir, n_images=args.images, n_sites=args.sites, reps=args.reps, seed=0,
                       image_size=args.image_size)
    dataset = neural_data.load(data_dir)
    cache_dir = args.work_dir / "activations"
    shutil.rmtree(cache_dir, ignore_errors=True)  # time a cold extraction, not a cache hit

    peak32 = matmul_peak(torch.float32, device)
    peak64 = matmul_peak(torch.float64, device)
    model, model_name = build_model(args.width)
    flops_per_image = forward_flops(model, args.input_size, device)

    t_plain = plain_forward_seconds(model, dataset.stimuli, args.input_size, args.batch_size, device)
    start = time.perf_counter()
    store = extract(model, dataset.stimuli, layers="default", image_size=args.input_size,
                    batch_size=args.batch_size, device=device, cache_dir=cache_dir,
                    num_workers=args.workers, progress=False)
    t_extract = time.perf_counter() - start

    start = time.perf_counter()
    for layer in store.layers:
        store.gram(layer, device=device)
    t_gram = time.perf_counter() - start
    n = len(store.stimulus_ids)
    features = {layer: store.shape(layer)[1] for layer in store.layers}
    gram_flops = sum(2.0 * n * n * f for f in features.values())
    fwd_flops = flops_per_image * n

    print(f"extraction {t_extract:.1f} s (plain forward {t_plain:.1f} s), Grams {t_gram:.1f} s; fitting...",
          flush=True)
    t_fit, fit_note = None, "pipeline.score.fit_scores absent: fit not timed"
    try:
        from pipeline.score import fit_scores
    except ImportError:
        fit_scores = None
    if fit_scores is not None:
        start = time.perf_counter()
        scores = fit_scores(store, dataset.averaged(), protocol="paper", n_splits=args.splits, device=device)
        t_fit = time.perf_counter() - start
        best = scores["best_median_r"].values.ravel().tolist()
        regions = sorted(str(r) for r in set(dataset.averaged()["region"].values))
        fit_note = (f"{len(store.layers)} layers x {len(regions)} regions {regions} x {args.splits} splits; "
                    f"best median r {[round(b, 3) for b in best]}")

    results = {
        "size": f"{n} images ({args.image_size}px files, {args.input_size}px input) x {args.sites} sites, "
                f"{model_name}, batch {args.batch_size}, {args.threads} threads, device {device}",
        "layers": len(store.layers),
        "total_features": sum(features.values()),
        "store_gb": store.path.stat().st_size / 1e9,
        "matmul_peak_gflops": {"float32": peak32 / 1e9, "float64": peak64 / 1e9},
        "extract_s": t_extract,
        "gram_s": t_gram,
        "plain_forward_s": t_plain,
        "extract_over_plain_forward": t_extract / t_plain,
        "fit_s": t_fit,
        "wall_s": t_extract + t_gram + (t_fit or 0.0),
        "forward_gflops": fwd_flops / 1e9,
        "gram_gflops": gram_flops / 1e9,
        "forward_fraction_of_fp32_peak": fwd_flops / t_extract / peak32,
        "gram_fraction_of_fp64_peak": gram_flops / t_gram / peak64,
        # time the same work would take at peak, over the time it took: the run's overall efficiency
        "forward_plus_gram_fraction_of_peak": (fwd_flops / peak32 + gram_flops / peak64) / (t_extract + t_gram),
        "peak_rss_gb": peak_rss_gb(),
        "fit": fit_note,
    }
    for name, value in results.items():
        print(f"{name:36s} {value:.4g}" if isinstance(value, float) else f"{name:36s} {value}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
