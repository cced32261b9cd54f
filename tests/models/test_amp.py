"""Mixed precision: the asymmetric layers under bf16 autocast, one AMP training step against fp32, and
amp=False leaving the fp32 path untouched."""
import numpy as np
import pytest
import torch
from torch import nn

import models
from models.checkpoint import read_checkpoint
from models.data import ArrayDataset
from models.factory import build_model_from_config
from models.presets import TrainConfig, with_overrides
from models.train import train


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def rel(a, b):
    return float((a.detach().double() - b.detach().double()).norm() / b.detach().double().norm())


@pytest.mark.parametrize("rule", ["fa", "kp"])
@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_layers_under_cpu_autocast_match_fp32_loosely(rule, kind):
    torch.manual_seed(0)
    if kind == "conv":
        reference = nn.Conv2d(4, 6, 3, stride=2, padding=1)
        x = torch.randn(3, 4, 9, 9)
    else:
        reference = nn.Linear(7, 5)
        x = torch.randn(3, 7)
    layer = models.convert(nn.Sequential(reference), rule)[0]
    results = {}
    for precision in ("fp32", "bf16"):
        layer.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            y = layer(xi)
        y.float().square().sum().backward()
        results[precision] = (y, xi.grad, {n: p.grad for n, p in layer.named_parameters() if p.grad is not None})
    y32, gx32, grads32 = results["fp32"]
    y16, gx16, grads16 = results["bf16"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert y16.dtype == reference(x).dtype == torch.bfloat16  # the dtype nn's own layer gives
    assert gx16.dtype == torch.float32 and rel(gx16, gx32) < 0.05
    assert rel(y16, y32) < 0.02
    assert grads16.keys() == grads32.keys() == ({"weight", "bias", "weight_backward"} if rule == "kp"
                                                 else {"weight", "bias"})
    for name, grad in grads16.items():
        assert grad.dtype == torch.float32, name  # every parameter's gradient in its own dtype
        assert rel(grad, grads32[name]) < 0.05, name
    if rule == "kp":
        assert torch.equal(grads16["weight_backward"], grads16["weight"])


def one_step_config(rule, **overrides):
    return TrainConfig(rule=rule, width=0.125, small_input=True, image_size=16, num_classes=10, batch_size=32,
                       epochs=1, lr=0.1, warmup_epochs=0, lr_drops=[], **overrides)


@pytest.fixture(scope="module")
def one_batch():
    from sklearn.datasets import load_digits

    data = load_digits()
    return ArrayDataset((data.images[:32] / 16.0).astype(np.float32), data.target[:32], image_size=16)


def cosine(a, b):
    a, b = a.double().flatten(), b.double().flatten()
    return float(a @ b / (a.norm() * b.norm()))


@pytest.mark.parametrize("rule", ["fa", "aa", "kp"])
def test_with_b_equal_to_w_autocast_gives_backprops_autocast_gradients(rule, one_batch):
    """The asymmetric functions cast under autocast exactly as torch's own layers do."""
    torch.manual_seed(0)
    net = models.build_model("resnet18", rule, num_classes=10, width=0.125, small_input=True)
    with torch.no_grad():
        for _, layer in models.asymmetric_layers(net):
            layer.weight_backward.copy_(layer.weight)
    bp = models.build_model("resnet18", "bp", num_classes=10, width=0.125, small_input=True)
    bp.load_state_dict({k: v for k, v in net.state_dict().items() if not k.endswith("weight_backward")})
    grads = []
    for model in (net, bp):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = nn.functional.cross_entropy(model(one_batch.images), one_batch.labels)
        loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if not n.endswith("weight_backward")})
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[1].items():
        torch.testing.assert_close(grads[0][name], grad, rtol=1e-6, atol=1e-9, msg=name)


@pytest.mark.parametrize("rule", ["aa", "kp", "bp"])
def test_one_amp_training_step_matches_the_fp32_step(tmp_path, one_batch, rule):
    config = one_step_config(rule, alignment={"lr": 1e-2})
    torch.manual_seed(config.seed)
    initial = build_model_from_config(config).state_dict()
    updates, metrics = {}, {}
    for amp in (False, True):
        path = train(with_overrides(config, amp=amp), one_batch, None, tmp_path / str(amp), progress=False)
        payload = read_checkpoint(path)
        metrics[amp] = payload["metadata"]["metrics"]
        updates[amp] = {name: payload["model"][name] - initial[name] for name in initial
                        if name.endswith("weight") and initial[name].ndim > 1}
    assert metrics[True]["task_loss"] == pytest.approx(metrics[False]["task_loss"], rel=1e-2)
    if rule == "aa":  # R from the bf16 forward's activations, computed in fp32
        assert metrics[True]["alignment_loss"] == pytest.approx(metrics[False]["alignment_loss"], rel=1e-2)
    # bf16 gradients are noisy in this narrow net's first layers (torch's own layers too: the bp case), so the
    # step is compared as a whole, and exactly only where the noise is small (the classifier)
    whole = [torch.cat([delta.flatten() for delta in updates[amp].values()]) for amp in (True, False)]
    assert cosine(*whole) > 0.8
    fc = updates[False]["fc.weight"]
    assert float((updates[True]["fc.weight"] - fc).norm() / fc.norm()) < 0.1


def test_amp_false_never_enters_autocast_and_keeps_the_config_key(tmp_path, one_batch, monkeypatch):
    entered = []
    real_autocast = torch.autocast

    def spy(*args, **kwargs):
        entered.append(kwargs.get("dtype"))
        return real_autocast(*args, **kwargs)

    monkeypatch.setattr(torch, "autocast", spy)
    train(one_step_config("aa"), one_batch, None, tmp_path / "fp32", progress=False)
    assert entered == []  # the fp32 path is the code path of before AMP existed
    train(one_step_config("aa", amp=True), one_batch, None, tmp_path / "amp", progress=False)
    assert entered and set(entered) == {torch.bfloat16}
    assert "amp" not in one_step_config("aa").model_dump()  # configs recorded before AMP still compare equal
    assert one_step_config("aa", amp=True).model_dump()["amp"] is True
