"""The alignment loss: what it trains, its dynamics (SA aligns, weight mirror's three regimes), its options."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import models
from models import primitives as P
from models.alignment import AlignmentOptions, MissingActivationsError, alignment_loss
from models.layers import AsymConv2d, AsymLinear
from models.metrics import alignment_metrics
from models.rules import Rule


def small_net(rule):
    net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 5))
    return models.convert(net, rule).double()


def x_batch(n=6):
    return torch.randn(n, 3, 8, 8, dtype=torch.float64)


def test_only_b_receives_gradient():
    net = small_net("ia")
    x = x_batch().requires_grad_(True)
    net(x)
    total, per_layer = alignment_loss(net)
    total.backward()
    assert set(per_layer) == {"0", "3"}
    assert torch.isclose(total, sum(per_layer.values()))
    assert x.grad is None
    for _, layer in models.asymmetric_layers(net):
        assert layer.weight.grad is None and layer.bias.grad is None
        assert layer.weight_backward.grad is not None and layer.weight_backward.grad.abs().sum() > 0


def test_loss_equals_the_weighted_primitives_on_the_stash():
    """Default options: R is Table 1 on (W, B, layer input, layer output), summed with the rule's weights."""
    rule = Rule("custom", {"amp": 0.7, "null": 0.2, "sparse": 0.3, "self": 0.4, "decay": 0.5})
    net = small_net(rule)
    x = x_batch()
    net(x)
    _, per_layer = alignment_loss(net)
    conv, lin = net[0], net[3]
    h = F.relu(F.conv2d(x, conv.weight, conv.bias, 2, 1)).flatten(1)
    for layer, inp in ((conv, x), (lin, h)):
        out = layer(inp)
        W, B = layer.weight.detach(), layer.weight_backward.detach()
        g = P.Geometry.of(layer)
        b = g.apply(inp, B)
        r = g.transpose(out, B, inp.shape)
        n = inp.shape[0]
        expected = (0.7 * -(b * out).sum() / n + 0.2 * 0.5 * (r * r).sum() / n + 0.3 * 0.5 * (b * b).sum() / n
                    + 0.4 * -(B * W).sum() + 0.5 * 0.5 * (B * B).sum())
        name = "0" if layer is conv else "3"
        assert torch.isclose(per_layer[name], expected, rtol=1e-10)


def test_gradient_descent_on_sa_aligns_b_with_w():
    net = small_net("sa")
    assert all(m["angle_deg"] > 45 for m in alignment_metrics(net).values())
    opt = torch.optim.SGD(models.backward_parameters(net), lr=100.0)  # B <- B - lr (2e-3 B - 1e-3 W)
    for _ in range(60):
        opt.zero_grad()
        alignment_loss(net)[0].backward()
        opt.step()
    for name, m in alignment_metrics(net).items():
        assert m["angle_deg"] < 1.0, name
        assert m["norm_ratio"] == pytest.approx(0.5, rel=1e-3)  # fixed point B = (alpha / beta) W = W / 2


def symmetrized_wm_flow(w0, b0, x, lam, steps=400, dt=0.01):
    """Euler steps of the symmetrized gradient flow of R_WM (Appendix D.1) on scalar w, b, x.

    b's gradient comes from `alignment_loss` on a 1x1 AsymLinear under amp + lam*decay; w's is the same
    primitives with W and B swapped (the symmetrization).
    """
    layer = AsymLinear(1, 1, bias=False, rule=Rule("wm", {"amp": 1.0, "decay": lam})).double()
    with torch.no_grad():
        layer.weight.fill_(w0)
        layer.weight_backward.fill_(b0)
    xs = torch.full((1, 1), x, dtype=torch.float64)
    for _ in range(steps):
        layer(xs)
        layer.weight_backward.grad = None
        alignment_loss(layer)[0].backward()
        grad_b = layer.weight_backward.grad.clone()
        w_as_b = layer.weight.detach().clone().requires_grad_(True)
        swapped = P.LayerTensors(layer.weight_backward.detach(), w_as_b, xs, xs @ layer.weight_backward.detach().T)
        (P.amp(swapped) + lam * P.decay(swapped)).backward()
        with torch.no_grad():
            layer.weight.sub_(dt * w_as_b.grad)
            layer.weight_backward.sub_(dt * grad_b)
    return float(layer.weight.detach()), float(layer.weight_backward.detach())


def test_weight_mirror_has_three_regimes():
    x, w0, b0 = 1.5, 0.8, 0.2  # x^2 = 2.25
    symmetric0 = (w0 + b0) / 2
    w, b = symmetrized_wm_flow(w0, b0, x, lam=3.0)  # lambda > x^2: everything decays
    assert (w + b) / 2 == pytest.approx(symmetric0 * (1 - 0.01 * 0.75) ** 400, rel=1e-6)
    assert abs(w - b) < 1e-3 * abs(w0 - b0) and abs(w) + abs(b) < 0.1 * (w0 + b0)
    w, b = symmetrized_wm_flow(w0, b0, x, lam=2.25)  # lambda = x^2: symmetric part stable, skew part decays
    assert (w + b) / 2 == pytest.approx(symmetric0, rel=1e-9)
    assert abs(w - b) < 1e-3 * abs(w0 - b0)
    w, b = symmetrized_wm_flow(w0, b0, x, lam=1.5)  # lambda < x^2: symmetric part grows like exp((x^2-l) t)
    assert (w + b) / 2 > 15 * symmetric0
    assert (w + b) / 2 == pytest.approx(symmetric0 * (1 + 0.01 * 0.75) ** 400, rel=1e-6)


def test_missing_activations_and_in_place_changes_are_reported():
    net = small_net("wm")
    with pytest.raises(MissingActivationsError, match="no stashed activations"):
        alignment_loss(net)
    net.eval()
    net(x_batch())
    with pytest.raises(MissingActivationsError, match="train mode"):
        alignment_loss(net)
    net.train()
    x = x_batch()
    net(x)
    x.mul_(2)  # the conv's stashed input changed after the forward pass
    with pytest.raises(RuntimeError, match="modified in place"):
        alignment_loss(net)
    models.clear_stash(net)
    assert all(layer.stashed_input is None for _, layer in models.asymmetric_layers(net))


def test_rules_without_alignment_loss_give_zero():
    for rule in ("bp", "fa", "kp"):
        net = small_net(rule)
        net(x_batch())
        total, per_layer = alignment_loss(net)
        assert per_layer == {} and float(total) == 0.0 and not total.requires_grad


def test_sa_needs_no_activations():
    net = small_net("sa")
    total, _ = alignment_loss(net)  # no forward pass needed
    assert total.requires_grad


def linear_case(options):
    layer = AsymLinear(5, 4, rule=Rule("t", {"amp": 1.0, "sparse": 1.0})).double()
    x = torch.randn(7, 5, dtype=torch.float64)
    y = layer(x).detach()
    total, _ = alignment_loss(layer, options)
    return layer, x, y, total


def centre_features(t):
    return t - t.mean(1, keepdim=True)


def test_layer_ops_follow_their_definitions():
    options = AlignmentOptions(fo_bias=False, fo_relu=True, fo_bwmc=True, bo_bias=True, bo_fwl2n=True)
    layer, x, y, total = linear_case(options)
    W, B, bias = layer.weight.detach(), layer.weight_backward.detach(), layer.bias.detach()
    f = F.relu(x @ W.T)
    f = f - f.mean(0, keepdim=True)
    b = centre_features(x @ B.T + bias)
    b = b / b.norm(dim=1, keepdim=True)
    expected = -(b * f).sum() / 7 + 0.5 * (b * b).sum() / 7
    assert torch.isclose(total, expected, rtol=1e-10)

    options = AlignmentOptions(bi_bwmc=True, bi_fwl2n=True, fo_fwmc=True, bo_relu=True, bo_fwmc=True)
    layer, x, y, total = linear_case(options)
    W, B, bias = layer.weight.detach(), layer.weight_backward.detach(), layer.bias.detach()
    xi = x - x.mean(0, keepdim=True)
    xi = centre_features(xi)
    xi = xi / xi.norm(dim=1, keepdim=True)
    f = centre_features(xi @ W.T + bias)
    b = centre_features(F.relu(xi @ B.T))
    expected = -(b * f).sum() / 7 + 0.5 * (b * b).sum() / 7
    assert torch.isclose(total, expected, rtol=1e-10)


def test_conv_feature_ops_act_on_channels():
    layer = AsymConv2d(3, 4, 3, padding=1, rule=Rule("t", {"sparse": 1.0})).double()
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    layer(x)
    total, _ = alignment_loss(layer, AlignmentOptions(bo_fwmc=True))
    b = F.conv2d(x, layer.weight_backward.detach(), None, 1, 1)
    b = b - b.mean(1, keepdim=True)
    assert torch.isclose(total, 0.5 * (b * b).sum() / 2, rtol=1e-10)


def test_input_noise_replace_and_perturb():
    layer = AsymLinear(5, 4, rule=Rule("t", {"amp": 1.0})).double()
    x = torch.randn(7, 5, dtype=torch.float64)
    W, B, bias = layer.weight.detach(), layer.weight_backward.detach(), layer.bias.detach()
    for mode in ("replace", "perturb"):
        layer(x)
        torch.manual_seed(3)
        total, _ = alignment_loss(layer, AlignmentOptions(input_noise=0.5, noise_mode=mode))
        torch.manual_seed(3)
        noise = 0.5 * torch.randn(7, 5, dtype=torch.float64)
        xi = noise if mode == "replace" else x + noise
        assert torch.isclose(total, -((xi @ B.T) * (xi @ W.T + bias)).sum() / 7, rtol=1e-10), mode


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="noise_mode"):
        AlignmentOptions(noise_mode="add")
    with pytest.raises(ValueError, match="input_noise"):
        AlignmentOptions(input_noise=-1)
    with pytest.raises(KeyError, match="fo_relu"):
        AlignmentOptions.from_dict({"fo_rleu": True}, source="presets/x.toml")
    assert AlignmentOptions.from_dict({"bo_relu": True}).bo_relu


# ---------------------------------------------------------------------------------------------------------
# Sub-batch: R on the first ceil(f * N) samples of the stash


def per_layer_loss_on(layer, x_l, x_next):
    """The layer's R from Table 1 on given activations (default options), built without alignment_loss."""
    tensors = P.LayerTensors(layer.weight.detach(), layer.weight_backward, x_l, x_next, P.Geometry.of(layer))
    return sum(weight * P.FUNCTIONS[name](tensors) for name, weight in layer.rule.terms.items())


@pytest.mark.parametrize("fraction,kept", [(0.5, 3), (0.25, 2), (0.34, 3), (1e-6, 1)])
def test_batch_fraction_evaluates_r_on_the_first_samples(fraction, kept):
    rule = Rule("custom", {"amp": 0.7, "null": 0.2, "sparse": 0.3, "self": 0.4, "decay": 0.5})
    net = small_net(rule)
    net(x_batch(6))
    _, per_layer = alignment_loss(net, AlignmentOptions(batch_fraction=fraction))
    for name, layer in models.asymmetric_layers(net):
        expected = per_layer_loss_on(layer, layer.stashed_input[:kept], layer.stashed_output[:kept])
        assert torch.isclose(per_layer[name], expected, rtol=1e-10), name
        full = per_layer_loss_on(layer, layer.stashed_input, layer.stashed_output)
        assert not torch.isclose(per_layer[name], full, rtol=1e-6)  # it really is another estimate


def test_batch_fraction_one_is_the_whole_batch():
    net = small_net("ia")
    net(x_batch(5))
    total, per_layer = alignment_loss(net)
    same_total, same = alignment_loss(net, AlignmentOptions(batch_fraction=1.0))
    assert torch.equal(total, same_total) and all(torch.equal(per_layer[k], same[k]) for k in per_layer)
    for name, layer in models.asymmetric_layers(net):
        assert torch.isclose(per_layer[name], per_layer_loss_on(layer, layer.stashed_input, layer.stashed_output),
                             rtol=1e-10), name


def test_batch_fraction_gradient_matches_the_sub_batch_formula():
    """With layer ops and noise off, dR/dB on the sub-batch equals autograd of the formula on the sub-batch."""
    net = small_net("aa")
    net(x_batch(8))
    alignment_loss(net, AlignmentOptions(batch_fraction=0.5))[0].backward()
    for name, layer in models.asymmetric_layers(net):
        got = layer.weight_backward.grad.clone()
        layer.weight_backward.grad = None
        per_layer_loss_on(layer, layer.stashed_input[:4], layer.stashed_output[:4]).backward()
        torch.testing.assert_close(got, layer.weight_backward.grad, rtol=1e-10, atol=1e-12, msg=name)


def test_bad_batch_fractions_are_rejected():
    for bad in (0, -0.5, 1.5):
        with pytest.raises(ValueError, match="AlignmentOptions.batch_fraction"):
            AlignmentOptions(batch_fraction=bad)
