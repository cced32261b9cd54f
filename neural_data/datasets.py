"""The built-in registered datasets: the synthetic one (generated on demand) and MajajHong2015."""
from __future__ import annotations

from . import synth
from .loaders.folder import load_folder
from .majajhong import load_majajhong2015
from .registry import register
from .schema import NeuralDataset


@register("synthetic")
def synthetic(n_images: int = 320, n_sites: int = 40, reps: int = 6, seed: int = 0, image_size: int = 64,
              cache_dir=None) -> NeuralDataset:
    """Synthetic MajajHong2015-shaped dataset with planted answers, generated into the cache on first use."""
    path = synth.cached(n_images=n_images, n_sites=n_sites, reps=reps, seed=seed, image_size=image_size,
                        cache_dir=cache_dir)
    return load_folder(path)


@register("MajajHong2015")
def majajhong2015(data_root=None, **kwargs) -> NeuralDataset:
    """Majaj, Hong et al. 2015 as the paper uses it: V3+V6 (5120 images), 168 IT + 88 V4 sites, 70-170 ms."""
    return load_majajhong2015("paper", data_root=data_root, **kwargs)


@register("MajajHong2015.public")
def majajhong2015_public(data_root=None, **kwargs) -> NeuralDataset:
    """Majaj, Hong et al. 2015, Brain-Score's public selection: variations 0 and 3 (3200 images)."""
    return load_majajhong2015("public", data_root=data_root, **kwargs)


@register("MajajHong2015.private")
def majajhong2015_private(data_root=None, **kwargs) -> NeuralDataset:
    """Majaj, Hong et al. 2015, Brain-Score's private selection: variation 6 (2560 images)."""
    return load_majajhong2015("private", data_root=data_root, **kwargs)
