"""Asymmetric layers against independent references: nn.Conv2d/nn.Linear autograd and conv2d_input."""
import copy

import pytest
import torch
from torch import nn

import models
from models.layers import AsymConv2d, AsymLinear


def rel_err(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


class SmallNet(nn.Module):
    """conv (strided, grouped) -> ReLU -> conv (dilated) -> ReLU -> linear: every layer kind and hyperparameter."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 5, 3, padding=2, dilation=2, bias=False)
        self.relu2 = nn.ReLU()
        self.fc = nn.Linear(5 * 4 * 4, 3)

    def forward(self, x):
        x = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        return self.fc(x.flatten(1))


def grads(net, x):
    x = x.clone().requires_grad_(True)
    out = net(x)
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    named = {n: p.grad.clone() for n, p in net.named_parameters() if not n.endswith("weight_backward")}
    return out.detach(), x.grad.clone(), named


@pytest.mark.parametrize("rule", list(models.RULES))
def test_tied_b_gives_exact_gradients(rule):
    """With B equal to W, every rule's input and weight gradients are backprop's (float64, rel err < 1e-6)."""
    reference = SmallNet().double()
    net = models.convert(copy.deepcopy(reference), rule)
    with torch.no_grad():
        for _, layer in models.asymmetric_layers(net):
            if layer.weight_backward is not None:
                layer.weight_backward.copy_(layer.weight)
    x = torch.randn(3, 4, 8, 8, dtype=torch.float64)
    out_ref, gx_ref, g_ref = grads(reference, x)
    out, gx, g = grads(net, x)
    assert torch.equal(out, out_ref)
    assert rel_err(gx, gx_ref) < 1e-6
    assert g.keys() == g_ref.keys()
    for name in g_ref:
        assert rel_err(g[name], g_ref[name]) < 1e-6, name


def test_bp_layers_are_plain_layers():
    net = models.convert(SmallNet(), "bp")
    assert models.backward_parameters(net) == []
    assert set(net.state_dict()) == set(SmallNet().state_dict())


@pytest.mark.parametrize("stride,padding,dilation,groups", [
    (1, 0, 1, 1), (2, 1, 1, 1), (1, 2, 2, 1), (2, 1, 1, 3), (3, (1, 2), (2, 1), 1),
])
def test_conv_input_gradient_goes_through_b(stride, padding, dilation, groups):
    conv = nn.Conv2d(6, 9, (3, 2), stride=stride, padding=padding, dilation=dilation, groups=groups).double()
    layer = models.convert(nn.Sequential(copy.deepcopy(conv)), "fa")[0]
    x = torch.randn(2, 6, 11, 10, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    dy = torch.randn_like(y)
    y.backward(dy)
    expected_gx = torch.nn.grad.conv2d_input(x.shape, layer.weight_backward.detach(), dy, conv.stride,
                                             conv.padding, conv.dilation, conv.groups)
    assert rel_err(x.grad, expected_gx) < 1e-10

    x_ref = x.detach().clone().requires_grad_(True)
    conv(x_ref).backward(dy)
    assert rel_err(layer.weight.grad, conv.weight.grad) < 1e-10
    assert rel_err(layer.bias.grad, conv.bias.grad) < 1e-10
    assert layer.weight_backward.grad is None  # fa: B gets no gradient from the task loss
    assert rel_err(x_ref.grad, x.grad) > 1e-2  # and the input gradient really differs from backprop's


def test_linear_input_gradient_goes_through_b_with_extra_dims():
    lin = nn.Linear(5, 4).double()
    layer = models.convert(nn.Sequential(copy.deepcopy(lin)), "fa")[0]
    x = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(2, 3, 4, dtype=torch.float64)
    layer(x).backward(dy)
    assert rel_err(x.grad, dy @ layer.weight_backward.detach()) < 1e-12
    lin(x.detach()).backward(dy)
    assert rel_err(layer.weight.grad, lin.weight.grad) < 1e-12
    assert rel_err(layer.bias.grad, lin.bias.grad) < 1e-12


def test_needs_input_grad_is_respected():
    layer = AsymConv2d(3, 4, 3, padding=1, rule="fa")
    layer.weight.requires_grad_(False)
    layer.bias.requires_grad_(False)
    x = torch.randn(2, 3, 5, 5, requires_grad=True)
    layer(x).sum().backward()
    assert x.grad is not None and layer.weight.grad is None and layer.bias.grad is None
    linear = AsymLinear(3, 2, rule="fa")
    linear(torch.randn(4, 3)).sum().backward()  # input needs no grad: only W and bias get one
    assert linear.weight.grad is not None and linear.bias.grad is not None


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_kp_update_of_b_equals_update_of_w(weight_decay):
    """KP: grad B := grad W, so with one shared param group the steps are identical (up to weight decay)."""
    torch.manual_seed(1)
    net = models.convert(SmallNet().double(), "kp")
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=weight_decay)
    before = {n: (l.weight.detach().clone(), l.weight_backward.detach().clone())
              for n, l in models.asymmetric_layers(net)}
    for _ in range(2):  # two steps, so momentum buffers are exercised too
        opt.zero_grad()
        net(torch.randn(3, 4, 8, 8, dtype=torch.float64)).square().mean().backward()
        for _, layer in models.asymmetric_layers(net):
            assert torch.equal(layer.weight_backward.grad, layer.weight.grad)
        opt.step()
        if weight_decay == 0:
            break
    for name, layer in models.asymmetric_layers(net):
        W0, B0 = before[name]
        dW, dB = layer.weight.detach() - W0, layer.weight_backward.detach() - B0
        if weight_decay == 0:
            assert torch.allclose(dB, dW, rtol=0, atol=1e-15), name
            assert dW.abs().max() > 0
        else:
            # B - W follows the decay alone: (B - W)_t = (B - W)_0 * c, c from the momentum recursion.
            lr, mu, c = 0.1, 0.9, 1.0 - 0.1 * weight_decay
            c2 = c * c - lr * mu * weight_decay  # two steps: after step 2 the buffer holds mu*wd*(B-W)_0 too
            diff = layer.weight_backward.detach() - layer.weight.detach()
            assert rel_err(diff, (B0 - W0) * c2) < 1e-10, name


def test_b_is_a_persistent_parameter():
    layer = AsymConv2d(3, 4, 3, rule="wm")
    B = layer.weight_backward
    assert isinstance(B, nn.Parameter) and B.shape == layer.weight.shape
    assert any(p is B for p in layer.parameters())
    assert "weight_backward" in layer.state_dict()
    layer(torch.randn(1, 3, 5, 5))
    assert layer.weight_backward is B  # never re-created by forward
    layer.to(torch.float64)
    assert layer.weight_backward.dtype == torch.float64
    # an optimizer step on B changes the backward pass
    x = torch.randn(1, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    layer(x).sum().backward()
    g1 = x.grad.clone()
    with torch.no_grad():
        layer.weight_backward.mul_(2)
    x.grad = None
    layer(x).sum().backward()
    assert torch.allclose(x.grad, 2 * g1)


def test_stash_only_in_train_mode_and_only_when_needed():
    x = torch.randn(2, 3, 6, 6)
    wm = AsymConv2d(3, 4, 3, rule="wm")
    wm.eval()
    wm(x)
    assert wm.stashed_input is None
    wm.train()
    with torch.no_grad():
        wm(x)
    assert wm.stashed_input is None
    y = wm(x)
    assert torch.equal(wm.stashed_input, x) and torch.equal(wm.stashed_output, y.detach())
    assert not wm.stashed_input.requires_grad
    for rule in ("fa", "sa", "kp", "bp"):
        layer = AsymConv2d(3, 4, 3, rule=rule)
        layer(x)
        assert layer.stashed_input is None and layer.stashed_output is None, rule
    aa = AsymConv2d(3, 4, 3, rule="aa")
    aa(x)
    assert aa.stashed_input is not None and aa.stashed_output is not None
    sparse_only = AsymConv2d(3, 4, 3, rule="sparse=1")
    sparse_only(x)
    assert sparse_only.stashed_input is not None and sparse_only.stashed_output is None


def test_padding_modes_and_same_padding():
    for padding_mode in ("reflect", "circular"):
        conv = nn.Conv2d(2, 3, 3, padding=1, padding_mode=padding_mode).double()
        layer = models.convert(nn.Sequential(copy.deepcopy(conv)), "fa")[0]
        x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
        assert torch.allclose(layer(x), conv(x))
    same = AsymConv2d(2, 3, 5, padding="same", rule="fa")
    assert same(torch.randn(1, 2, 7, 7)).shape[-2:] == (7, 7)
    with pytest.raises(ValueError, match="asymmetric padding"):
        AsymConv2d(2, 3, 4, padding="same", rule="fa")
