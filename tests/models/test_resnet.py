"""ResNets and convert(): torchvision equivalence, state_dict round trips, device/dtype moves, clear errors."""
import copy
import io

import pytest
import torch
import torchvision
from torch import nn

import models
from models.convert import MissingBackwardWeightsError, load_state_dict


def test_converted_torchvision_resnet18_bp_is_identical():
    reference = torchvision.models.resnet18(weights=None, num_classes=7).double()
    converted = models.convert(copy.deepcopy(reference), "bp")
    assert len(models.asymmetric_layers(converted)) == 21  # 17 convs + 3 downsample convs + fc
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    outputs, input_grads, param_grads = [], [], []
    for net in (reference, converted):
        xi = x.clone().requires_grad_(True)
        out = net(xi)
        out.square().sum().backward()
        outputs.append(out.detach())
        input_grads.append(xi.grad)
        param_grads.append({n: p.grad for n, p in net.named_parameters()})
    assert torch.equal(outputs[0], outputs[1])
    assert torch.equal(input_grads[0], input_grads[1])
    assert param_grads[0].keys() == param_grads[1].keys()
    for name, g in param_grads[0].items():
        assert torch.equal(g, param_grads[1][name]), name


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50"])
def test_v1_state_dict_keys_match_torchvision(arch):
    ours = models.build_model(arch, "bp", width=0.125)
    theirs = getattr(torchvision.models, arch)(weights=None, num_classes=1000)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    fa = models.build_model(arch, "fa", width=0.125)
    backward_keys = [k for k in fa.state_dict() if k.endswith("weight_backward")]
    assert len(backward_keys) == len(models.asymmetric_layers(fa))
    assert [k for k in fa.state_dict() if not k.endswith("weight_backward")] == list(theirs.state_dict())


def test_torchvision_state_dict_loads_into_resnet18():
    tv = torchvision.models.resnet18(weights=None).eval()
    ours = models.resnet18("bp").eval()
    ours.load_state_dict(tv.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(ours(x), tv(x), atol=1e-5)

    fa = models.resnet18("fa")
    with pytest.raises(MissingBackwardWeightsError) as info:
        load_state_dict(fa, tv.state_dict(), source="resnet18-tv.pth")
    message = str(info.value)
    assert "resnet18-tv.pth" in message and "conv1.weight_backward" in message and "missing_backward" in message
    load_state_dict(fa, tv.state_dict(), source="resnet18-tv.pth", missing_backward="copy")
    assert torch.equal(fa.layer1[0].conv1.weight_backward, tv.layer1[0].conv1.weight)
    before = fa.fc.weight_backward.detach().clone()
    load_state_dict(fa, tv.state_dict(), missing_backward="keep")
    assert torch.equal(fa.fc.weight_backward, before) and torch.equal(fa.fc.weight, tv.fc.weight)
    with pytest.raises(ValueError, match="has none"):
        load_state_dict(models.resnet18("bp"), fa.state_dict(), source="fa.pt")


def test_state_dict_round_trip_keeps_b_and_to_moves_it():
    net = models.resnet18("wm", width=0.125, small_input=True, num_classes=5)
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    buffer.seek(0)
    clone = models.resnet18("wm", width=0.125, small_input=True, num_classes=5)
    assert not torch.equal(clone.conv1.weight_backward, net.conv1.weight_backward)  # independent draws
    load_state_dict(clone, torch.load(buffer), source="buffer")
    for (name, a), (_, b) in zip(models.asymmetric_layers(net), models.asymmetric_layers(clone)):
        assert torch.equal(a.weight_backward, b.weight_backward), name
    clone.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in models.backward_parameters(clone))
    assert clone(torch.randn(2, 3, 16, 16, dtype=torch.float64)).dtype == torch.float64


def test_b_init_is_independent_with_the_same_scheme():
    net = models.resnet18("fa", width=0.5)
    for name, layer in models.asymmetric_layers(net):
        W, B = layer.weight.detach(), layer.weight_backward.detach()
        assert not torch.equal(W, B)
        if W.numel() > 10000:
            assert B.std() == pytest.approx(float(W.std()), rel=0.1), name  # kaiming normal fan_out for both
            assert models.metrics.weight_angle_deg(W, B) > 80


def test_every_relu_is_its_own_module():
    for arch in ("resnet18", "resnet50", "resnet50_v2"):
        net = models.build_model(arch, "fa", width=0.0625, small_input=True, num_classes=3)
        calls = {}
        for name, module in net.named_modules():
            if isinstance(module, nn.ReLU):
                module.register_forward_hook(lambda m, i, o, name=name: calls.__setitem__(name, calls.get(name, 0) + 1))
        net(torch.randn(1, 3, 16, 16))
        assert calls and set(calls.values()) == {1}, arch  # each ReLU module runs exactly once
        assert len(calls) == sum(isinstance(m, nn.ReLU) for m in net.modules())


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "resnet50_v2"])  # one per block kind (cheap on CPU)
def test_each_block_kind_trains_one_step(arch):
    net = models.build_model(arch, "aa", width=0.0625, small_input=True, num_classes=3)
    out = net(torch.randn(2, 3, 8, 8))
    assert out.shape == (2, 3)
    nn.functional.cross_entropy(out, torch.tensor([0, 2])).backward()
    total, per_layer = models.alignment_loss(net)
    total.backward()
    assert len(per_layer) == len(models.asymmetric_layers(net))
    assert all(p.grad is not None for p in models.forward_parameters(net))


def test_resnet_variants_shapes():
    assert models.resnet18(width=0.125).conv1.kernel_size == (7, 7)
    small = models.resnet18(width=0.125, small_input=True)
    assert small.conv1.kernel_size == (3, 3) and isinstance(small.maxpool, nn.Identity)
    assert models.resnet50(width=0.125).fc.in_features == 256
    v2 = models.resnet101_v2(width=0.0625)
    assert len(v2.layer3) == 23 and v2.fc.in_features == 128
    assert [len(s) for s in (models.resnet152_v2(width=0.0625).layer2, models.resnet34(width=0.0625).layer3)] == [8, 6]


def test_bad_inputs_are_reported():
    with pytest.raises(KeyError, match="valid archs: resnet18"):
        models.build_model("vgg16")
    with pytest.raises(ValueError, match="width"):
        models.resnet18(width=0)
    with pytest.raises(ValueError, match="no nn.Conv2d or nn.Linear"):
        models.convert(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)), "fa")
    with pytest.raises(KeyError, match="valid rules"):
        models.resnet18("magic")


def test_convert_switches_rules_in_place():
    net = models.resnet18("bp", width=0.0625, small_input=True)
    assert models.backward_parameters(net) == []
    assert models.convert(net, "kp") is net
    assert len(models.backward_parameters(net)) == len(models.asymmetric_layers(net))
    assert all(layer.rule.name == "kp" for _, layer in models.asymmetric_layers(net))
    models.convert(net, "bp")
    assert models.backward_parameters(net) == []
