"""Train-step time of each learning rule relative to backprop, measured in one run.

One step = forward, task-loss backward, alignment-loss backward (rules that have one), optimizer steps
(SGD with momentum on W; Adam on B for rules with an alignment loss; kp's B in W's SGD group; fa's B
frozen), with torch's fused optimizer kernels for every rule by default (`--optimizer default` for the
per-tensor ones).
Every rule uses the same ResNet-18 (width configurable), batch 32, 64x64 images, 1000 classes. Rules are
interleaved (in rotating order) within each repeat so that machine-load drifts hit all of them alike; the ratio of medians
is printed and a section is appended to bench/RESULTS.md.

`--batch-fractions 1,0.5,0.25` adds, for each rule whose alignment loss reads activations (wm, ia, aa), a
variant evaluating R on that share of the batch (`alignment.batch_fraction`); `--amp` runs the forward pass
and the task loss under bf16 autocast, as the trainer does with `amp = true`.

    python bench/step_time.py                       # full width, CUDA when present
    python bench/step_time.py --width 0.5 --repeats 5 --threads 2
    python bench/step_time.py --rules bp,ia,aa --batch-fractions 1,0.5,0.25
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import models  # noqa: E402

TARGETS = {"fa": 1.1, "kp": 1.1, "sa": 1.2, "wm": 1.5, "ia": 1.5, "aa": 1.5}


def variants(rules: list[str], fractions: list[float]) -> dict[str, tuple[str, float]]:
    """{label: (rule, batch fraction)}: every rule at f = 1, plus the other fractions where R reads activations."""
    table = {}
    for rule in rules:
        for fraction in fractions:
            if fraction == 1:
                table[rule] = (rule, 1.0)
            elif models.get_rule(rule).needs_activations:
                table[f"{rule} f={fraction:g}"] = (rule, fraction)
    return table


def make_trainer(rule: str, width: float, device: torch.device, seed: int = 0, fused: bool = True,
                 batch_fraction: float = 1.0, amp: bool = False):
    torch.manual_seed(seed)
    options = models.AlignmentOptions(batch_fraction=batch_fraction)
    precision = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if amp else contextlib.nullcontext
    net = models.resnet18(rule, num_classes=1000, width=width).to(device).train()
    rule_obj = models.get_rule(rule)
    backward = models.backward_parameters(net)
    forward = models.forward_parameters(net)
    if rule_obj.transport_updates:
        sgd_params, adam = forward + backward, None
    elif rule_obj.needs_alignment_loss:
        sgd_params, adam = forward, torch.optim.Adam(backward, lr=1e-3, fused=fused)
    else:
        for p in backward:
            p.requires_grad_(False)
        sgd_params, adam = forward, None
    sgd = torch.optim.SGD(sgd_params, lr=0.01, momentum=0.9, weight_decay=1e-4, fused=fused)

    def step(images, labels):
        sgd.zero_grad(set_to_none=True)
        with precision():
            loss = F.cross_entropy(net(images), labels)
        loss.backward()
        if adam is not None:
            adam.zero_grad(set_to_none=True)
            models.alignment_loss(net, options)[0].backward()
            adam.step()
        sgd.step()

    return step


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(table, width, batch, size, warmup, repeats, device, fused=True, amp=False):
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=gen).to(device)
    labels = torch.randint(0, 1000, (batch,), generator=gen).to(device)
    steps = {label: make_trainer(rule, width, device, fused=fused, batch_fraction=fraction, amp=amp)
             for label, (rule, fraction) in table.items()}
    rules = list(table)
    for _ in range(warmup):
        for step in steps.values():
            step(images, labels)
    times = {rule: [] for rule in rules}
    for repeat in range(repeats):
        order = rules[repeat % len(rules):] + rules[:repeat % len(rules)]  # rotate: no rule always goes first
        for rule in order:
            step = steps[rule]
            sync(device)
            start = time.perf_counter()  # a fixed batch: data loading is not part of the rule's cost
            step(images, labels)
            sync(device)
            times[rule].append(time.perf_counter() - start)
    return times


def report(times, args, device) -> str:
    bp = statistics.median(times["bp"])
    lines = [
        f"## Rule engine: train-step time relative to bp ({dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC)",
        "",
        f"`python bench/step_time.py --width {args.width} --repeats {args.repeats} --warmup {args.warmup} "
        f"--threads {args.threads} --optimizer {args.optimizer} --rules {args.rules} "
        f"--batch-fractions {args.batch_fractions}{' --amp' if args.amp else ''}`: "
        f"ResNet-18 width {args.width}, batch {args.batch}, {args.size}x{args.size}, "
        f"1000 classes, device {device} ({platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}), "
        f"{args.repeats} interleaved repeats after {args.warmup} warm-up steps; median step times.",
        "",
        "| rule | median step (s) | ratio to bp | target | met |",
        "|---|---|---|---|---|",
    ]
    for label, values in times.items():
        median = statistics.median(values)
        ratio = median / bp
        target = TARGETS.get(label.split()[0])
        met = "-" if target is None else ("yes" if ratio <= target else "NO")
        lines.append(f"| {label} | {median:.3f} | {ratio:.2f}x | {'-' if target is None else f'<= {target}x'} | {met} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--rules", default="bp,fa,kp,sa,wm,ia,aa")
    parser.add_argument("--optimizer", choices=["fused", "default"], default="fused",
                        help="torch.optim implementation for every rule (fused: one kernel per step)")
    parser.add_argument("--batch-fractions", default="1",
                        help="comma-separated shares of the batch R is evaluated on, e.g. 1,0.5,0.25")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast for the forward pass and task loss")
    parser.add_argument("--results", default=str(Path(__file__).with_name("RESULTS.md")))
    parser.add_argument("--no-append", action="store_true", help="print only, do not append to RESULTS.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rules = [r.strip() for r in args.rules.split(",")]
    if "bp" not in rules:
        rules.insert(0, "bp")
    fractions = [float(f) for f in args.batch_fractions.split(",")]
    if 1.0 not in fractions:
        fractions.insert(0, 1.0)
    times = measure(variants(rules, fractions), args.width, args.batch, args.size, args.warmup, args.repeats,
                    device, fused=args.optimizer == "fused", amp=args.amp)
    text = report(times, args, device)
    print(text)
    if not args.no_append:
        with open(args.results, "a") as handle:
            handle.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
