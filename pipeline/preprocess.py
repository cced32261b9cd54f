"""Image preprocessing as Brain-Score does it, batched.

Brain-Score (``model_tools.activations.pytorch.load_preprocess_images``) turns gray, palette and
alpha images into RGB, resizes to ``image_size x image_size`` with torchvision's PIL ``Resize``
(bilinear, no centre crop, aspect ratio not kept), scales to [0, 1] and applies the ImageNet
normalisation. This module does the same: decoding and resizing per image in PIL (optionally in
DataLoader workers), then one vectorised uint8 -> float normalisation per batch.

Every field of :class:`Preprocessing` changes the pixels, so all of them go into the
activation cache key (``Preprocessing.as_dict``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Names accepted for `Preprocessing.interpolation`, mapped to PIL resampling filters.
_INTERPOLATIONS = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class Preprocessing:
    """How stimuli become network input; recorded in every activation store and its cache key.

    image_size: side in pixels of the square network input (the image is resized, never cropped).
    mean, std: per-channel normalisation applied to pixel values scaled to [0, 1].
    interpolation: PIL resampling filter used by the resize (one of ``_INTERPOLATIONS``).
    """

    image_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    def __post_init__(self):
        if not isinstance(self.image_size, (int, np.integer)) or self.image_size < 1:
            raise ValueError(f"Preprocessing.image_size must be a positive integer, got {self.image_size!r}")
        object.__setattr__(self, "image_size", int(self.image_size))
        for field in ("mean", "std"):
            values = tuple(float(v) for v in getattr(self, field))
            if len(values) != 3:
                raise ValueError(f"Preprocessing.{field} needs 3 values (R, G, B), got {values!r}")
            object.__setattr__(self, field, values)
        if any(s <= 0 for s in self.std):
            raise ValueError(f"Preprocessing.std must be positive, got {self.std!r}")
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(
                f"Preprocessing.interpolation {self.interpolation!r} is not known; "
                f"valid: {sorted(_INTERPOLATIONS)}"
            )

    def as_dict(self) -> dict:
        """Plain JSON-ready fields (lists, not tuples) for cache keys and metadata."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def to_rgb(image: Image.Image) -> Image.Image:
    """Gray, palette and alpha images become RGB, alpha dropped.

    Brain-Score pastes such images onto a black RGB canvas without a mask; PIL's paste converts
    the pasted image to the canvas mode first, which is exactly ``convert("RGB")``.
    """
    return image if image.mode == "RGB" else image.convert("RGB")


def load_pixels(image: Image.Image, preprocessing: Preprocessing) -> np.ndarray:
    """One PIL image -> resized RGB pixels, uint8 array of shape (size, size, 3)."""
    size = preprocessing.image_size
    resized = to_rgb(image).resize((size, size), _INTERPOLATIONS[preprocessing.interpolation])
    return np.array(resized, dtype=np.uint8)  # a writable copy: torch.from_numpy needs one


def normalize(pixels: torch.Tensor, preprocessing: Preprocessing) -> torch.Tensor:
    """uint8 pixels (batch, H, W, 3) -> normalised float32 network input (batch, 3, H, W).

    Runs wherever ``pixels`` lives, so moving uint8 to the GPU first sends 4x fewer bytes.
    The arithmetic is torchvision's ToTensor (divide by 255) then Normalize (subtract, divide).
    """
    if pixels.dtype != torch.uint8 or pixels.ndim != 4 or pixels.shape[-1] != 3:
        raise ValueError(f"pixels must be uint8 of shape (batch, H, W, 3), got {pixels.dtype} {tuple(pixels.shape)}")
    x = pixels.permute(0, 3, 1, 2).float().div(255)
    mean = torch.tensor(preprocessing.mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(preprocessing.std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std).contiguous()


def preprocess_images(images: Sequence[Image.Image], preprocessing: Preprocessing | None = None) -> torch.Tensor:
    """PIL images -> normalised float32 tensor (n, 3, image_size, image_size)."""
    preprocessing = preprocessing or Preprocessing()
    pixels = np.stack([load_pixels(image, preprocessing) for image in images])
    return normalize(torch.from_numpy(pixels), preprocessing)


class StimulusPixels(torch.utils.data.Dataset):
    """Dataset over a stimulus set: item i -> uint8 pixels (size, size, 3) of ``stimulus_ids[i]``.

    Normalisation is left to :func:`normalize` on the whole batch, so workers ship uint8.
    """

    def __init__(self, stimuli, preprocessing: Preprocessing):
        self.stimuli = stimuli
        self.stimulus_ids = list(stimuli.stimulus_ids)
        self.preprocessing = preprocessing

    def __len__(self) -> int:
        return len(self.stimulus_ids)

    def __getitem__(self, index: int) -> torch.Tensor:
        image = self.stimuli.open(self.stimulus_ids[index])
        return torch.from_numpy(load_pixels(image, self.preprocessing))


def batch_ranges(n_items: int, batch_size: int) -> list[range]:
    """Consecutive index ranges of at most ``batch_size`` covering ``range(n_items)``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return [range(start, min(start + batch_size, n_items)) for start in range(0, n_items, batch_size)]


def iter_pixel_batches(
    stimuli,
    preprocessing: Preprocessing,
    batch_size: int,
    batches: Sequence[int] | None = None,
    num_workers: int = 0,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(batch_index, uint8 pixels (b, size, size, 3))`` for the selected batches, in order.

    batches: indices into ``batch_ranges(len(stimuli), batch_size)``; ``None`` means all. Skipping
    batches is how a resumed extraction avoids decoding images it already has.
    num_workers: DataLoader worker processes decoding and resizing images (0 = in this process).
    """
    dataset = StimulusPixels(stimuli, preprocessing)
    ranges = batch_ranges(len(dataset), batch_size)
    selected = list(range(len(ranges))) if batches is None else list(batches)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=[list(ranges[b]) for b in selected],
        num_workers=num_workers,
        collate_fn=torch.stack,
    )
    yield from zip(selected, loader)
