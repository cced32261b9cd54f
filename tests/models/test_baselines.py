"""The untrained baseline: torchvision's ResNet-18 module for module, seeded weights, the RNG left alone."""
import pytest
import torch
import torchvision
from torch import nn

import models
from models.baselines import random_init

# Module kinds compared between our networks and torchvision's; anything else is compared by class name.
FAMILIES = (nn.Conv2d, nn.BatchNorm2d, nn.Linear, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.ReLU, nn.Sequential,
            nn.Identity)


def family(module: nn.Module) -> str:
    return next((kind.__name__ for kind in FAMILIES if isinstance(module, kind)), type(module).__name__)


def modules_except_relus(model: nn.Module) -> dict[str, str]:
    return {name: family(module) for name, module in model.named_modules() if not isinstance(module, nn.ReLU)}


def tensors_of(module: nn.Module) -> dict[str, tuple]:
    own = list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
    return {name: tuple(tensor.shape) for name, tensor in own}


def test_random_init_resnet18_is_torchvisions_module_for_module():
    ours, _ = random_init("resnet18")
    theirs = torchvision.models.resnet18()
    # Every module but the ReLUs has torchvision's name and kind. The ReLUs differ on purpose: torchvision
    # calls one `relu` module twice per block, ours are distinct modules (`relu1`, `relu2`) so that each
    # activation can be hooked on its own; they hold no parameters or buffers.
    assert modules_except_relus(ours) == modules_except_relus(theirs)
    holding = {name: tensors_of(module) for name, module in ours.named_modules() if tensors_of(module)}
    assert holding == {name: tensors_of(module) for name, module in theirs.named_modules() if tensors_of(module)}
    assert len(holding) == 41  # 20 convs + 20 batch norms + fc
    relus = {name for name, module in ours.named_modules() if isinstance(module, nn.ReLU)}
    assert relus == {"relu"} | {f"layer{i}.{j}.relu{k}" for i in range(1, 5) for j in (0, 1) for k in (1, 2)}


def test_state_dicts_load_both_ways_and_compute_the_same():
    ours, _ = random_init("resnet18", seed=3, num_classes=10)
    theirs = torchvision.models.resnet18(num_classes=10).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x))
    fresh, _ = random_init("resnet18", seed=4, num_classes=10)
    back = torchvision.models.resnet18(num_classes=10).eval()
    back.load_state_dict(fresh.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(back(x), fresh(x))


def test_weights_are_the_seeded_build_and_the_global_rng_is_untouched():
    settings = dict(num_classes=10, width=0.25, small_input=True)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    model, metadata = random_init("resnet18", seed=5, **settings)
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(5)
    reference = models.build_model("resnet18", "bp", **settings)
    assert models.weights_sha256(model) == models.weights_sha256(reference) == metadata["sha256"]
    other, _ = random_init("resnet18", seed=6, **settings)
    assert models.weights_sha256(other) != metadata["sha256"]
    assert not model.training


def test_metadata_of_the_baseline():
    _, metadata = random_init("resnet18", seed=2, width=0.25, small_input=True, num_classes=10)
    assert {key: metadata[key] for key in ("rule", "arch", "width", "small_input", "num_classes", "seed", "top1",
                                           "top5", "image_size")} == {
        "rule": "random", "arch": "resnet18", "width": 0.25, "small_input": True, "num_classes": 10, "seed": 2,
        "top1": None, "top5": None, "image_size": 32}
    assert random_init("resnet18", width=0.0625)[1]["image_size"] == 224
    assert random_init("resnet50_v2", width=0.0625)[1]["image_size"] == 299
    assert random_init("resnet18", width=0.0625, small_input=True, image_size=48)[1]["image_size"] == 48
    with pytest.raises(KeyError, match="valid archs"):
        random_init("vgg11")
