"""`check_folder`: everything a fit would refuse in a folder dataset, and what it would leave out.

Problems fail the check: a fit (or loading the dataset) would stop on them. Warnings do not: the
dataset loads, but a fit leaves some sites out (see `site_problems`) and lists them in its report.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import xarray as xr

from .errors import DatasetValidationError, cut_list
from .loaders.folder import folder_dataset, read_responses, read_stimuli
from .manifest import read_manifest
from .schema import NEUROID, PRESENTATION, NeuralDataset, average_repetitions
from .stimuli import StimulusSet
from .validate import find_problems, site_problems

# What reading a folder raises for a bad file: missing files, malformed fields, undecodable values.
READ_ERRORS = (ValueError, LookupError, OSError)


@dataclass
class FolderCheck:
    """The result of `check_folder`: problems (the check fails), warnings (it passes) and, when there
    are no problems, the dataset itself."""

    folder: Path
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    dataset: NeuralDataset | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def check_folder(folder: str | Path) -> FolderCheck:
    """Check a folder dataset: the manifest's keys and types, the files, the schema, that every image
    decodes, and which sites a fit would leave out. Reads every image once, one at a time."""
    result = FolderCheck(Path(folder))
    try:
        manifest = read_manifest(result.folder)
        stimuli = read_stimuli(result.folder, manifest)
    except DatasetValidationError as error:
        result.problems += [f"{error.source}: {problem}" for problem in error.problems]
        return result
    except READ_ERRORS as error:
        result.problems.append(str(error))
        return result
    result.problems += image_problems(stimuli)
    try:
        assembly = read_responses(result.folder, manifest, stimuli)
    except READ_ERRORS as error:
        result.problems.append(str(error))
        return result
    result.problems = find_problems(assembly, stimuli, **manifest.validation_options()) + result.problems
    if _has_site_and_stimulus_ids(assembly):
        result.warnings += site_warnings(average_repetitions(assembly))
    if result.problems:
        return result
    try:
        result.dataset = folder_dataset(result.folder, manifest, stimuli, assembly)
    except READ_ERRORS as error:
        result.problems.append(str(error))
    return result


def _has_site_and_stimulus_ids(assembly: xr.DataArray) -> bool:
    """Whether the responses can be averaged per stimulus and named per site (else find_problems says why)."""
    return (set(assembly.dims) == {PRESENTATION, NEUROID}
            and all(name in assembly.coords for name in ("stimulus_id", "neuroid_id")))


def image_problems(stimuli: StimulusSet) -> list[str]:
    """One sentence naming every image file that exists but does not decode (stimulus id and file)."""
    unreadable = stimuli.unreadable_images()
    if not unreadable:
        return []
    entries = [f"{stimulus_id} ({why})" for stimulus_id, why in unreadable.items()]
    return [f"image files that are not readable images: {cut_list(entries, 'stimulus', 'stimuli')}"]


def site_warnings(averaged: xr.DataArray) -> list[str]:
    """Sentences naming the sites of an averaged assembly that a fit leaves out (see `site_problems`)."""
    sites = site_problems(averaged)
    warnings = []
    if sites["constant"]:
        warnings.append(f"sites whose averaged response is the same for every stimulus (no correlation is "
                        f"defined; a fit leaves them out): {cut_list(sites['constant'], 'site id')}")
    if sites["partly_nan"]:
        warnings.append(f"sites with no response (NaN) to some stimuli (a fit leaves them out): "
                        f"{cut_list(sites['partly_nan'], 'site id')}")
    return warnings
