"""Preprocessing equals Brain-Score's recipe computed directly with PIL + torchvision."""
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from pipeline.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocessing,
    batch_ranges,
    iter_pixel_batches,
    preprocess_images,
)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one thread is faster, and spinning OpenMP threads starve a shared 2-core box."""
    torch.set_num_threads(1)
    yield


def brainscore_reference(image: Image.Image, size: int) -> torch.Tensor:
    """Brain-Score's load_image (paste non-RGB onto an RGB canvas) + torchvision_preprocess_input."""
    if image.mode != "RGB":
        canvas = Image.new("RGB", image.size)
        canvas.paste(image)
        image = canvas
    pipeline = transforms.Compose(
        [transforms.Resize((size, size)), transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    )
    return pipeline(image)


def random_image(mode: str, width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": None}[mode] if mode != "P" else None
    shape = (height, width) if channels is None else (height, width, channels)
    image = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode if mode != "P" else "L")
    return image.convert("P") if mode == "P" else image


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P"])
@pytest.mark.parametrize("size", [16, 24])
def test_matches_brainscore_reference(mode, size):
    # Non-square source (30 x 20): a resize without crop squeezes it, a centre crop would not.
    images = [random_image(mode, 30, 20, seed) for seed in range(3)]
    ours = preprocess_images(images, Preprocessing(image_size=size))
    reference = torch.stack([brainscore_reference(image, size) for image in images])
    assert ours.shape == (3, 3, size, size) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)


def test_gray_becomes_three_equal_channels():
    gray = random_image("L", 20, 20, seed=1)
    x = preprocess_images([gray], Preprocessing(image_size=20, mean=(0, 0, 0), std=(1, 1, 1)))[0]
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    torch.testing.assert_close(x[0], torch.from_numpy(np.array(gray)).float() / 255, rtol=0, atol=1e-7)


def test_resize_keeps_the_border_no_centre_crop():
    # A red frame one-fifth wide survives a plain resize in every corner; a centre crop would cut it.
    pixels = np.zeros((40, 60, 3), dtype=np.uint8)
    pixels[:8], pixels[-8:], pixels[:, :12], pixels[:, -12:] = 255, 255, 255, 255
    pixels[..., 1:] = 0
    unnormalised = Preprocessing(image_size=16, mean=(0, 0, 0), std=(1, 1, 1))
    x = preprocess_images([Image.fromarray(pixels)], unnormalised)[0]
    for corner in [(0, 0), (0, -1), (-1, 0), (-1, -1)]:
        assert x[0][corner] == 1.0 and x[1][corner] == 0.0
    assert x[0, 8, 8] == 0.0  # the centre stays black


def test_normalisation_of_a_uniform_image():
    value = 200
    image = Image.new("RGB", (10, 10), (value, value, value))
    x = preprocess_images([image], Preprocessing(image_size=8))[0]
    expected = (value / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(x.mean(dim=(1, 2)).numpy(), expected, rtol=1e-6)
    assert float(x.std(dim=(1, 2)).max()) == 0.0


def test_preprocessing_record_and_validation():
    prep = Preprocessing(image_size=32)
    assert prep.as_dict() == {
        "image_size": 32,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "interpolation": "bilinear",
    }
    assert Preprocessing(image_size=32) == prep and Preprocessing(image_size=33) != prep
    with pytest.raises(ValueError, match="image_size"):
        Preprocessing(image_size=0)
    with pytest.raises(ValueError, match="interpolation.*valid"):
        Preprocessing(interpolation="cubic-ish")
    with pytest.raises(ValueError, match="std"):
        Preprocessing(std=(0.2, 0.0, 0.2))


class _Stimuli:
    def __init__(self, images):
        self.images = {f"s{i}": image for i, image in enumerate(images)}
        self.stimulus_ids = list(self.images)

    def open(self, stimulus_id):
        return self.images[stimulus_id]


def test_batches_select_and_workers_agree():
    images = [random_image("RGB", 18, 14, seed) for seed in range(7)]
    prep = Preprocessing(image_size=12)
    assert [list(r) for r in batch_ranges(7, 3)] == [[0, 1, 2], [3, 4, 5], [6]]
    in_process = dict(iter_pixel_batches(_Stimuli(images), prep, batch_size=3))
    assert sorted(in_process) == [0, 1, 2] and in_process[2].shape == (1, 12, 12, 3)
    assert in_process[0].dtype == torch.uint8
    selected = dict(iter_pixel_batches(_Stimuli(images), prep, batch_size=3, batches=[2, 0], num_workers=1))
    assert sorted(selected) == [0, 2]
    assert all(torch.equal(selected[b], in_process[b]) for b in selected)
