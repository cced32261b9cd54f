"""Brain-Score's benchmark identifiers as presets, and their numbers under Brain-Score's names.

A benchmark fixes the dataset selection, the region it reports, the protocol (``brainscore``: Brain-Score's
splits, aggregation, row order), the ceiling (``internal_consistency``) and the ceiled-score formula
(``r^2/c``, Brain-Score 2.x's ``explained_variance``)::

    benchmark = get_benchmark("MajajHong2015public.IT-pls")
    dataset = neural_data.load(benchmark.dataset, data_root=...)
    scores = fit_scores(store, dataset.averaged(), protocol=benchmark.protocol, trials=dataset.assembly)
    rows = benchmark_summary(scores, benchmark)    # per checkpoint and layer: score, raw, error, ceiling, ...

Brain-Score's names for the numbers (:data:`BRAINSCORE_NAMES`): ``score`` is the ceiled score (the Score's
value), ``raw`` its ``attrs['raw']`` (mean over splits of the median r over sites), ``error`` its
``attrs['error']`` (the raw score's error, which Brain-Score attaches to the ceiled score unchanged),
``ceiling`` its ``attrs['ceiling']`` and ``ceiling_error`` that ceiling's ``attrs['error']``.

Brain-Score scores one committed layer per region; the rows here give every layer, with ``best`` marking
the layer whose raw score is highest on the same splits (optimistic, as the report's best layer).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import xarray as xr

__all__ = ["Benchmark", "BENCHMARKS", "BRAINSCORE_NAMES", "benchmark_summary", "get_benchmark",
           "write_benchmark_summary"]

# Brain-Score's name -> variable of the scores Dataset (pipeline.results)
BRAINSCORE_NAMES = {"score": "ceiled", "raw": "median_r", "error": "sem", "ceiling": "ceiling",
                    "ceiling_error": "ceiling_error"}


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """One Brain-Score neural benchmark as settings of this project.

    dataset: a registered dataset name (:mod:`neural_data`); region: the neuroid ``region`` it scores;
    protocol, ceiling, ceiling_formula: see :mod:`pipeline.protocols` and :mod:`pipeline.ceiling`;
    version: Brain-Score's version number of the benchmark.
    """

    identifier: str
    dataset: str
    region: str
    protocol: str = "brainscore"
    ceiling: str = "internal_consistency"
    ceiling_formula: str = "r^2/c"
    n_components: int = 25
    version: int = 4

    def protocol_options(self) -> dict:
        """Protocol settings that pin the benchmark's ceiling and formula (equal to the protocol's defaults)."""
        return {"ceiling": self.ceiling, "ceiling_formula": self.ceiling_formula, "n_components": self.n_components}


BENCHMARKS: dict[str, Benchmark] = {bench.identifier: bench for bench in (
    Benchmark("MajajHong2015public.IT-pls", "MajajHong2015.public", "IT"),
    Benchmark("MajajHong2015public.V4-pls", "MajajHong2015.public", "V4"),
    Benchmark("MajajHong2015.IT-pls", "MajajHong2015.private", "IT"),
    Benchmark("MajajHong2015.V4-pls", "MajajHong2015.private", "V4"),
)}


def get_benchmark(identifier: str | Benchmark) -> Benchmark:
    """A benchmark by Brain-Score identifier (e.g. ``MajajHong2015public.IT-pls``)."""
    if isinstance(identifier, Benchmark):
        return identifier
    if identifier not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {identifier!r}; valid: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[identifier]


def benchmark_summary(scores: xr.Dataset, benchmark: str | Benchmark) -> list[dict]:
    """One row per (checkpoint, layer) of the benchmark's region, with Brain-Score's names for the numbers.

    scores: the scores Dataset (:mod:`pipeline.results`) of a run under the benchmark's protocol with a
    trial-level assembly (for the ceiling). Raises when the run's protocol, ceiling or formula differ.
    """
    benchmark = get_benchmark(benchmark)
    _check_settings(scores, benchmark)
    at_region = scores.sel(region=benchmark.region)
    rows = []
    for checkpoint in scores["checkpoint"].values.astype(str):
        numbers = at_region.sel(checkpoint=checkpoint)
        raw = numbers["median_r"].values
        best = int(np.nanargmax(raw)) if np.isfinite(raw).any() else -1
        for li, layer in enumerate(scores["layer"].values.astype(str)):
            row = {"benchmark": benchmark.identifier, "checkpoint": checkpoint, "layer": layer}
            for name, variable in BRAINSCORE_NAMES.items():
                values = numbers[variable]
                row[name] = float(values.values[li] if "layer" in values.dims else values.values)
            rows.append({**row, "best": li == best})
    return rows


def write_benchmark_summary(report_dir: str | Path, benchmark: str | Benchmark) -> Path:
    """Write ``benchmark.json`` (the rows of :func:`benchmark_summary` plus the settings) beside ``scores.nc``."""
    benchmark = get_benchmark(benchmark)
    report_dir = Path(report_dir)
    path = report_dir / "scores.nc"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no scores.nc in the report folder to summarise for {benchmark.identifier}")
    with xr.open_dataset(path) as scores:
        rows = benchmark_summary(scores.load(), benchmark)
        dataset = str(scores.attrs.get("dataset", ""))
    out = report_dir / "benchmark.json"
    document = {"benchmark": dataclasses.asdict(benchmark), "dataset": dataset, "names": BRAINSCORE_NAMES,
                "rows": rows}
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(document, indent=1) + "\n")
    tmp.replace(out)
    return out


def _check_settings(scores: xr.Dataset, benchmark: Benchmark) -> None:
    expected = {"protocol": benchmark.protocol, "ceiling_name": benchmark.ceiling,
                "ceiling_formula": benchmark.ceiling_formula, "n_components": benchmark.n_components}
    for key, value in expected.items():
        if str(scores.attrs.get(key)) != str(value):
            raise ValueError(f"benchmark {benchmark.identifier}: the scores have {key}={scores.attrs.get(key)!r}, "
                             f"the benchmark needs {value!r} (was a trial-level assembly given for the ceiling?)")
    if benchmark.region not in scores["region"].values.astype(str):
        raise LookupError(f"benchmark {benchmark.identifier}: the scores have no region {benchmark.region!r}; "
                          f"regions: {', '.join(scores['region'].values.astype(str))}")
