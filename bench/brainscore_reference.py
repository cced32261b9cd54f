"""Score arrays with Brain-Score's own metric, ceiling and normalisation (run with an interpreter that has
brainscore_vision installed; bench/brainscore_regression.py calls it with --brainscore-python).

    /path/to/brainscore-venv/bin/python bench/brainscore_reference.py case.npz out.json

case.npz: features (n_stimuli, p), feature_ids (n_stimuli,), trials (n_trials, n_sites), trial_stimulus,
trial_repetition, trial_object (n_trials,), neuroid_id, region (n_sites,), n_components. Per region, the
trial assembly is built as brainio loads it (image_id first, then repetition, object_name, stimulus_id),
averaged with Brain-Score's average_repetition, scored with CrossRegressedCorrelation(pls_regression,
pearsonr_correlation, stratified by object_name), ceiled with InternalConsistency and explained_variance,
exactly as its MajajHong2015 `-pls` benchmarks do. Writes {region: numbers} as JSON.
"""
import json
import sys
import warnings

import numpy as np

warnings.filterwarnings("ignore")

from brainscore_core.supported_data_standards.brainio.assemblies import NeuroidAssembly, NeuronRecordingAssembly  # noqa: E402
from brainscore_vision.benchmark_helpers.neural_common import average_repetition, explained_variance  # noqa: E402
from brainscore_vision.metrics.internal_consistency.ceiling import InternalConsistency  # noqa: E402
from brainscore_vision.metrics.regression_correlation.metric import (  # noqa: E402
    CrossRegressedCorrelation, pearsonr_correlation, pls_regression)


def region_scores(arrays, region: str) -> dict:
    keep = arrays["region"].astype(str) == region
    stimulus = arrays["trial_stimulus"].astype(str)
    trials = NeuronRecordingAssembly(arrays["trials"][:, keep], coords={
        "image_id": ("presentation", stimulus),
        "repetition": ("presentation", arrays["trial_repetition"]),
        "object_name": ("presentation", arrays["trial_object"].astype(str)),
        "stimulus_id": ("presentation", stimulus),
        "neuroid_id": ("neuroid", arrays["neuroid_id"].astype(str)[keep]),
        "region": ("neuroid", arrays["region"].astype(str)[keep]),
    }, dims=["presentation", "neuroid"])
    averaged = average_repetition(trials)
    feature_ids = arrays["feature_ids"].astype(str)
    object_of = dict(zip(stimulus, arrays["trial_object"].astype(str)))
    n_features = arrays["features"].shape[1]
    source = NeuroidAssembly(arrays["features"], coords={
        "stimulus_id": ("presentation", feature_ids),
        "object_name": ("presentation", [object_of[sid] for sid in feature_ids]),
        "neuroid_id": ("neuroid", [f"feature{i}" for i in range(n_features)]),
        "layer": ("neuroid", ["layer"] * n_features),
    }, dims=["presentation", "neuroid"])
    metric = CrossRegressedCorrelation(
        regression=pls_regression(regression_kwargs=dict(n_components=int(arrays["n_components"]))),
        correlation=pearsonr_correlation(), crossvalidation_kwargs=dict(stratification_coord="object_name"))
    raw = metric(source, averaged)
    ceiling = InternalConsistency()(trials)
    ceiled = explained_variance(raw, ceiling)
    return {"averaged_order": [str(sid) for sid in averaged["stimulus_id"].values],
            "raw": float(raw.values), "error": float(raw.attrs["error"]),
            "raw_neuroid": [str(n) for n in raw.raw["neuroid_id"].values],
            "raw_values": np.asarray(raw.raw.transpose("split", "neuroid").values).tolist(),
            "ceiling": float(ceiling.values), "ceiling_error": float(ceiling.attrs["error"]),
            "ceiling_neuroid": [str(n) for n in ceiling.raw["neuroid_id"].values],
            "ceiling_values": np.asarray(ceiling.raw.transpose("split", "neuroid").values).tolist(),
            "ceiled": float(ceiled.values), "ceiled_error": float(ceiled.attrs["error"])}


def main() -> None:
    arrays = np.load(sys.argv[1], allow_pickle=False)
    regions = sorted(set(arrays["region"].astype(str)))
    with open(sys.argv[2], "w") as out:
        json.dump({region: region_scores(arrays, region) for region in regions}, out)


if __name__ == "__main__":
    main()
