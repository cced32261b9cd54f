"""Training data: ImageNet folders, a built-in real dataset that needs no download, and in-memory arrays.

Every dataset yields `(image, label)` with `image` a float tensor (3, H, W) normalised with the ImageNet
mean and std, and `label` an int. Each carries a `name` (recorded in checkpoints) and `num_classes`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch.utils.data import Dataset
from torchvision import datasets, transforms

from .errors import UnknownNameError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BUILTIN = ("digits",)


class ArrayDataset(Dataset):
    """Images held in memory, e.g. the synthetic object images of `neural_data.synth.training_set`.

    images: (N, H, W) or (N, H, W, C) with C in {1, 3}; uint8 in [0, 255] or float in [0, 1].
    labels: (N,) integers in [0, num_classes). Gray images are repeated to 3 channels; with `image_size`
    images are resized (bilinear) to image_size x image_size once, up front.
    """

    def __init__(self, images, labels, image_size: int | None = None, name: str = "arrays"):
        images = np.asarray(images)
        labels = np.asarray(labels)
        if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3)):
            raise ValueError(f"{name}: images must be (N, H, W) or (N, H, W, C) with C 1 or 3, got shape {images.shape}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"{name}: labels must have shape ({images.shape[0]},), got {labels.shape}")
        if not np.issubdtype(labels.dtype, np.integer) or labels.min(initial=0) < 0:
            raise ValueError(f"{name}: labels must be non-negative integers, got dtype {labels.dtype}")
        self.images = _to_normalised_tensor(images, image_size)
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.name = name
        self.num_classes = int(labels.max()) + 1 if len(labels) else 0

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.images[index], int(self.labels[index])


def builtin(name: str = "digits", image_size: int = 32, val_fraction: float = 0.2, seed: int = 0):
    """A small real dataset shipped with an installed package: `(train, val)` ArrayDatasets.

    `digits`: scikit-learn's 1797 handwritten 8x8 digits (10 classes), upsampled to image_size, gray to
    3 channels, split into train/val by a permutation seeded with `seed` (the same split on every call).
    """
    if name != "digits":
        raise UnknownNameError(f"unknown built-in dataset {name!r}; valid: {', '.join(BUILTIN)}")
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)  # (1797, 8, 8) in [0, 1]
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(labels))
    n_val = int(round(len(labels) * val_fraction))
    val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
    tag = f"builtin:digits(size={image_size},seed={seed})"
    return (
        ArrayDataset(images[train_idx], labels[train_idx], image_size, name=f"{tag}/train"),
        ArrayDataset(images[val_idx], labels[val_idx], image_size, name=f"{tag}/val"),
    )


def imagenet(root: str | Path, image_size: int = 224, resize_size: int | None = None):
    """ImageNet-style folders `root/train/<class>/*` and `root/val/<class>/*` as torchvision ImageFolders.

    Train: RandomResizedCrop(image_size) + horizontal flip; val: resize to `resize_size` (default
    image_size * 256/224, i.e. 256 for 224 and 342 for the v2 models' 299) then centre crop.
    """
    root = Path(root)
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise FileNotFoundError(f"{root}: expected an ImageNet-style folder with '{split}/<class>/' images")
    resize_size = resize_size or int(round(image_size * 256 / 224))
    normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train_tf = transforms.Compose([
        transforms.RandomResizedCrop(image_size), transforms.RandomHorizontalFlip(),
        transforms.ToTensor(), normalize,
    ])
    val_tf = transforms.Compose([
        transforms.Resize(resize_size), transforms.CenterCrop(image_size), transforms.ToTensor(), normalize,
    ])
    train = datasets.ImageFolder(root / "train", transform=train_tf)
    val = datasets.ImageFolder(root / "val", transform=val_tf)
    if train.classes != val.classes:
        raise ValueError(f"{root}: train and val class folders differ ({len(train.classes)} vs {len(val.classes)})")
    for split, dataset in (("train", train), ("val", val)):
        dataset.name = f"imagefolder:{root.resolve()}/{split}"
        dataset.num_classes = len(dataset.classes)
    return train, val


def resolve(spec: str, image_size: int = 224, seed: int = 0):
    """`(train, val)` from a CLI data argument: `builtin:digits` or an ImageNet-style folder path."""
    if spec.startswith("builtin:"):
        return builtin(spec.split(":", 1)[1], image_size=image_size, seed=seed)
    return imagenet(spec, image_size=image_size)


def dataset_name(dataset) -> str:
    """The name recorded in checkpoints (falls back to the class name)."""
    return str(getattr(dataset, "name", type(dataset).__name__))


def _to_normalised_tensor(images: np.ndarray, image_size: int | None) -> torch.Tensor:
    if images.dtype == np.uint8:
        pixels = torch.from_numpy(images.astype(np.float32) / 255.0)
    else:
        pixels = torch.from_numpy(np.asarray(images, dtype=np.float32))
        if pixels.numel() and (pixels.min() < 0 or pixels.max() > 1):
            raise ValueError("float images must lie in [0, 1] (or pass uint8 images in [0, 255])")
    if pixels.ndim == 3:
        pixels = pixels.unsqueeze(-1)
    pixels = pixels.permute(0, 3, 1, 2).contiguous()  # (N, C, H, W)
    if pixels.shape[1] == 1:
        pixels = pixels.expand(-1, 3, -1, -1)
    if image_size is not None and pixels.shape[-2:] != (image_size, image_size):
        pixels = torch.nn.functional.interpolate(pixels, size=(image_size, image_size), mode="bilinear",
                                                 align_corners=False).clamp(0, 1)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((pixels - mean) / std).contiguous()
