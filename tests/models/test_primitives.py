"""Each primitive's autograd gradient w.r.t. B equals its Table 1 closed form (in this package's layout).

Conv closed forms are checked through im2col (`F.unfold`): a conv is the matrix product B_mat @ X_col, so
Table 1's matrix formulas apply verbatim to the unfolded input, summed over positions -- a reference that
shares no code with the conv kernels the primitives use.
"""
import pytest
import torch
import torch.nn.functional as F

from models import primitives as P
from models.layers import AsymConv2d, AsymLinear

N = 5


def grad_wrt_B(fn, tensors):
    tensors.B.grad = None
    fn(tensors).backward()
    return tensors.B.grad.clone()


def linear_case():
    W = torch.randn(4, 6, dtype=torch.float64)
    B = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    x = torch.randn(N, 6, dtype=torch.float64)
    y = torch.randn(N, 4, dtype=torch.float64)
    return W, B, x, y


def linear_closed_forms(W, B, x, y):
    """Table 1 gradients, transposed into our (out, in) layout; batch mean."""
    B = B.detach()
    return {
        "decay": B,
        "amp": -(y.T @ x) / N,
        "null": (y.T @ y @ B) / N,
        "sparse": (B @ x.T @ x) / N,
        "self": -W,
    }


@pytest.mark.parametrize("amp_via", ["correlation", "reconstruction", "backward_output"])
@pytest.mark.parametrize("name", ["decay", "amp", "null", "sparse", "self"])
def test_linear_gradients_match_table_1(name, amp_via):
    W, B, x, y = linear_case()
    tensors = P.LayerTensors(W, B, x, y, P.LINEAR, amp_via=amp_via)
    expected = linear_closed_forms(W, B, x, y)[name]
    assert torch.allclose(grad_wrt_B(P.FUNCTIONS[name], tensors), expected, rtol=1e-10, atol=1e-12)


CONV = dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2))


def conv_case():
    W = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    B = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    x = torch.randn(N, 3, 7, 6, dtype=torch.float64)
    out_shape = F.conv2d(x, W, None, **CONV).shape
    y = torch.randn(out_shape, dtype=torch.float64)
    return W, B, x, y


def conv_closed_forms(W, B, x, y):
    """Table 1 on im2col matrices: X (N, C*k*k, L) columns, Y (N, C_out, L); sums over positions L."""
    Bm = B.detach().reshape(B.shape[0], -1)
    X = F.unfold(x, B.shape[-2:], **CONV)
    Y = y.reshape(N, y.shape[1], -1)
    YX = torch.einsum("nol,nil->oi", Y, X)
    XX = torch.einsum("nil,njl->ij", X, X)  # overlapping patches: ||x^T B||^2 is still the sum over columns
    shape = B.shape
    return {
        "decay": B.detach(),
        "amp": (-YX / N).reshape(shape),
        "sparse": (Bm @ XX / N).reshape(shape),
        "self": -W,
        "null": None,  # reconstruction folds overlapping patches: checked by its adjoint below
    }


@pytest.mark.parametrize("amp_via", ["correlation", "reconstruction", "backward_output"])
@pytest.mark.parametrize("name", ["decay", "amp", "sparse", "self"])
def test_conv_gradients_match_table_1(name, amp_via):
    W, B, x, y = conv_case()
    geometry = P.Geometry(True, CONV["stride"], CONV["padding"], CONV["dilation"], 1)
    tensors = P.LayerTensors(W, B, x, y, geometry, amp_via=amp_via)
    expected = conv_closed_forms(W, B, x, y)[name]
    assert torch.allclose(grad_wrt_B(P.FUNCTIONS[name], tensors), expected, rtol=1e-10, atol=1e-12)


def test_conv_null_gradient_matches_closed_form():
    """null = 1/2||B y||^2/N with B y = fold(B_mat^T Y): gradient sum_n Y_n (unfold(r_n))^T / N, r = B y."""
    W, B, x, y = conv_case()
    geometry = P.Geometry(True, CONV["stride"], CONV["padding"], CONV["dilation"], 1)
    tensors = P.LayerTensors(W, B, x, y, geometry)
    Bm = B.detach().reshape(4, -1)
    Y = y.reshape(N, 4, -1)
    r = F.fold(Bm.T @ Y, x.shape[-2:], B.shape[-2:], **CONV)  # B x_{l+1}: the transposed conv, via col2im
    assert torch.allclose(tensors.reconstruction, r, rtol=1e-10, atol=1e-12)
    R = F.unfold(r, B.shape[-2:], **CONV)
    expected = (torch.einsum("nol,nil->oi", Y, R) / N).reshape(B.shape)
    assert torch.allclose(grad_wrt_B(P.null, tensors), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_angle_gradient_is_the_forward_weight_gradient(kind):
    """angle = tr(x^T B g): its gradient equals W's gradient of the task loss (what kp transports)."""
    if kind == "linear":
        layer = AsymLinear(6, 4, rule="fa").double()
        x = torch.randn(N, 6, dtype=torch.float64)
    else:
        layer = AsymConv2d(3, 4, 3, stride=2, padding=1, rule="fa").double()
        x = torch.randn(N, 3, 7, 7, dtype=torch.float64)
    y = layer(x)
    target = torch.randn_like(y)
    task = 0.5 * ((y - target) ** 2).sum() / N
    g = torch.autograd.grad(task, y, retain_graph=True)[0]
    task.backward()
    tensors = P.LayerTensors(layer.weight.detach(), layer.weight_backward, x, None, P.Geometry.of(layer))
    assert torch.allclose(grad_wrt_B(lambda t: P.angle(t, g), tensors), layer.weight.grad, rtol=1e-10, atol=1e-12)


def test_primitive_values_have_the_documented_signs():
    W, B, x, y = linear_case()
    t = P.LayerTensors(W, B, x, x @ B.detach().T)  # y = x B^T: amp = -||x B^T||^2 / N < 0
    assert P.amp(t) < 0 and P.sparse(t) > 0 and P.null(t) > 0 and P.decay(t) > 0
    t_self = P.LayerTensors(B.detach().clone(), B)
    assert torch.isclose(P.self_(t_self), -2 * P.decay(t_self))


@pytest.mark.parametrize("case", ["linear", "conv"])
@pytest.mark.parametrize("name", ["decay", "self", "amp"])
def test_closed_forms_equal_autograd_of_the_primitive(name, case):
    """The graph-free (value, gradient) the alignment loss uses equals the primitive and its autograd."""
    if case == "linear":
        W, B, x, y = linear_case()
        geometry = P.LINEAR
    else:
        W, B, x, y = conv_case()
        geometry = P.Geometry(True, CONV["stride"], CONV["padding"], CONV["dilation"], 1)
    tensors = P.LayerTensors(W, B, x, y, geometry, amp_via="correlation")
    assert P.has_closed_form(name, tensors)
    value, c, T = P.closed_form(name, tensors)
    gradient = c * T
    assert torch.isclose(value, P.FUNCTIONS[name](tensors).detach(), rtol=1e-12)
    assert torch.allclose(gradient, grad_wrt_B(P.FUNCTIONS[name], tensors), rtol=1e-10, atol=1e-12)
    assert not P.has_closed_form("amp", P.LayerTensors(W, B, x, y, geometry, amp_via="reconstruction"))
