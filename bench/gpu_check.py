"""The full-scale GPU check, stage by stage; `bench/gpu_check.sh` runs it (see there for how).

Stages, each written to OUT/gpu_check.json as soon as it ends (a run cut short keeps what it measured):
1. environment: torch, device, GPU memory; matmul peaks (fp32, fp64, bf16) on the device;
2. train-step time of every rule relative to bp (ResNet-18, batch 256, 224 px, bf16 autocast as the trainer
   uses it with `amp = true`), bench/step_time.py's interleaved measurement;
3. one checkpoint at the paper's size: 5120 synthetic HvM-shaped images x 256 sites, full-width ResNet-18 at
   224 px, all default layers, Gram-first extraction, 240 PLS fits on the device (bench/neural_fit.py), with
   the fraction of the measured GEMM peaks and the peak GPU memory;
4. the PLS predictions of one layer and split computed on the device against the same computed on the CPU
   (must agree to 1e-6 relative).
`--small` runs the same stages at toy size on whatever device there is (the CPU here): the test suite runs it.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import neural_fit  # noqa: E402  (bench/neural_fit.py)
import step_time  # noqa: E402  (bench/step_time.py)

RULES = ["bp", "fa", "kp", "sa", "wm", "ia", "aa"]
FULL = {"step": {"width": 1.0, "batch": 256, "size": 224, "warmup": 2, "repeats": 5, "rules": RULES},
        "fit": {"images": 5120, "sites": 256, "reps": 4, "image_size": 64, "input_size": 224, "batch_size": 256,
                "splits": 10, "workers": 8}}
SMALL = {"step": {"width": 0.125, "batch": 4, "size": 32, "warmup": 1, "repeats": 2, "rules": ["bp", "fa", "sa"]},
         "fit": {"images": 64, "sites": 20, "reps": 2, "image_size": 32, "input_size": 32, "batch_size": 32,
                 "splits": 2, "workers": 0}}
AGREEMENT = 1e-6


def environment(device: torch.device) -> dict:
    info = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device),
            "threads": torch.get_num_threads()}
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info.update(gpu=properties.name, gpu_memory_gb=properties.total_memory / 1e9)
    info["matmul_peak_tflops"] = {name: neural_fit.matmul_peak(dtype, device, size=4096 if device.type == "cuda"
                                                                 else 1024) / 1e12
                                  for name, dtype in (("float32", torch.float32), ("float64", torch.float64),
                                                      ("bfloat16", torch.bfloat16))}
    return info


def step_ratios(settings: dict, device: torch.device) -> dict:
    table = step_time.variants(settings["rules"], [1.0])
    times = step_time.measure(table, settings["width"], settings["batch"], settings["size"], settings["warmup"],
                              settings["repeats"], device, amp=True)
    bp = statistics.median(times["bp"])
    return {"settings": {k: v for k, v in settings.items() if k != "rules"} | {"amp": "bf16 autocast"},
            "median_step_s": {rule: statistics.median(values) for rule, values in times.items()},
            "ratio_to_bp": {rule: statistics.median(values) / bp for rule, values in times.items()}}


def neural_fit_stage(settings: dict, device: torch.device, work_dir: Path) -> dict:
    args = argparse.Namespace(**settings, threads=torch.get_num_threads(), device=str(device),
                              memory_budget_gb=None, work_dir=work_dir)
    return neural_fit.one_size(args)


def pls_agreement(work_dir: Path, images: int, sites: int, image_size: int, device: torch.device) -> dict:
    """Predictions of one layer, both regions, split 0: on the device and on the CPU, from one Gram."""
    import neural_data
    from pipeline.metric import fit, plan_fits
    from pipeline.store import FeatureStore

    dataset = neural_data.load(work_dir / f"synth_{images}x{sites}_{image_size}px")
    store = FeatureStore(next((work_dir / f"store_{images}").glob("*.json")))
    plan = plan_fits(dataset.averaged(), "paper")
    layer = store.layers[len(store.layers) // 2]
    gram = store.gram(layer, rows=plan.stimulus_ids)
    worst = 0.0
    seconds = {}
    for region in plan.regions:
        timings = {}
        for where in (str(device), "cpu"):
            start = time.perf_counter()
            timings[where] = fit(plan, region, gram=gram, splits=[0], device=where)[(region, 0)]
            seconds[f"{region} {where}"] = time.perf_counter() - start
        reference = timings["cpu"]
        scale = np.abs(reference - reference.mean(axis=0)).max()
        worst = max(worst, float(np.abs(timings[str(device)] - reference).max() / scale))
    return {"layer": layer, "max_relative_difference": worst, "tolerance": AGREEMENT,
            "agree": worst <= AGREEMENT, "seconds": seconds,
            "note": "" if device.type == "cuda" else "no CUDA device: the CPU compared with itself"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json")
    parser.add_argument("--small", action="store_true", help="toy sizes, any device (the test suite's run)")
    parser.add_argument("--work-dir", type=Path, default=None, help="generated data and stores (default: OUT/work)")
    args = parser.parse_args(argv)
    sizes = SMALL if args.small else FULL
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not args.small and device.type != "cuda":
        parser.error("no CUDA device: the full check needs a GPU (use --small for the toy run on the CPU)")
    args.out.mkdir(parents=True, exist_ok=True)
    work_dir = args.work_dir or args.out / "work"
    results: dict = {"mode": "small" if args.small else "full", "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    stages = [("environment", lambda: environment(device)),
              ("train_step", lambda: step_ratios(sizes["step"], device)),
              ("neural_fit", lambda: neural_fit_stage(sizes["fit"], device, work_dir)),
              ("pls_gpu_vs_cpu", lambda: pls_agreement(work_dir, sizes["fit"]["images"], sizes["fit"]["sites"],
                                                       sizes["fit"]["image_size"], device))]
    for name, stage in stages:
        start = time.perf_counter()
        results[name] = stage()
        results[name + "_s"] = time.perf_counter() - start
        (args.out / "gpu_check.json").write_text(json.dumps(results, indent=1) + "\n")
        print(f"{name}: {results[name + '_s']:.1f} s", flush=True)
    return 0 if results["pls_gpu_vs_cpu"]["agree"] else 1


if __name__ == "__main__":
    sys.exit(main())
