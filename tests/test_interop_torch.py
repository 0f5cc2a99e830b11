"""The PyTorch adapter: implicit gradients against gradcheck, dense implicit-function solves and unrolled
autograd; training; TorchLayer; input errors."""

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

import deqcore as dq  # noqa: E402
from deqcore import nn  # noqa: E402
from deqcore.interop import torch as dqt  # noqa: E402
from tests.helpers import tanh_fixed_point  # noqa: E402

TIGHT = dict(atol=1e-12, rtol=1e-12, max_steps=300)


def cell(width, inputs=None, norm=0.6, seed=0):
    torch.manual_seed(seed)
    return dqt.example_cell(width, width if inputs is None else inputs, norm=norm)


def dense_ift_gradients(f, x, c):
    """dL/dx, dL/dW, dL/dU, dL/db for L = sum(c * z*), per sample by the implicit function theorem."""
    W, U, b = (t.detach().numpy() for t in (f.W.weight, f.U.weight, f.U.bias))
    xs, cs = x.detach().numpy(), c.numpy()
    z = tanh_fixed_point(W, xs @ U.T + b)
    dx, dW, dU, db = np.zeros_like(xs), np.zeros_like(W), np.zeros_like(U), np.zeros_like(b)
    eye = np.eye(W.shape[0])
    for i in range(xs.shape[0]):
        s = 1 - z[i] ** 2                                    # tanh' at the fixed point
        lam = np.linalg.solve((eye - s[:, None] * W).T, cs[i])
        mu = s * lam                                         # cotangent of the pre-activation
        dx[i], dW, dU, db = U.T @ mu, dW + np.outer(mu, z[i]), dU + np.outer(mu, xs[i]), db + mu
    return dx, dW, dU, db


def test_gradcheck_float64():
    f = cell(3)
    layer = dqt.DEQ(f, **TIGHT)
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, *p: layer(x), (x, *f.parameters()), atol=1e-6, rtol=1e-5)


TIGHT_GMRES = dq.SteadyStateAdjoint(dq.GMRES(rtol=1e-12, atol=0.0, max_steps=200))


@pytest.mark.parametrize("adjoint", [None, TIGHT_GMRES])
def test_gradients_match_dense_implicit_function_theorem(adjoint):
    f = cell(6, 4, norm=0.9, seed=1)
    layer = dqt.DEQ(f, adjoint=adjoint, **TIGHT)
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    c = torch.randn(5, 6, dtype=torch.float64)
    (layer(x, torch.zeros(5, 6, dtype=torch.float64)) * c).sum().backward()
    dx, dW, dU, db = dense_ift_gradients(f, x, c)
    for got, want in [(x.grad, dx), (f.W.weight.grad, dW), (f.U.weight.grad, dU), (f.U.bias.grad, db)]:
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-8, atol=1e-10)
    assert layer.last_solution.success.all() and layer.last_adjoint.nvjp >= 1


@pytest.mark.parametrize("batched", [True, False])
def test_gradients_match_unrolled_autograd(batched):
    f = cell(8, 5, norm=0.8, seed=2)
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    c = torch.randn(4, 8, dtype=torch.float64)
    z0 = torch.zeros(4, 8, dtype=torch.float64)
    z = z0
    for _ in range(200):
        z = f(z, x)
    want = torch.autograd.grad((z * c).sum(), (x, *f.parameters()))
    layer = dqt.DEQ(f, adjoint=dq.SteadyStateAdjoint(dq.LU()), batched=batched, **TIGHT)
    got = torch.autograd.grad((layer(x, z0) * c).sum(), (x, *f.parameters()))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-8, atol=1e-10)
    assert layer.last_solution.batched is batched


@given(batch=st.integers(1, 4), width=st.integers(2, 7), inputs=st.integers(1, 5),
       norm=st.floats(0.05, 0.9), seed=st.integers(0, 2**16), batched=st.booleans())
def test_random_contractive_cells_match_dense_gradients(batch, width, inputs, norm, seed, batched):
    f = cell(width, inputs, norm=norm, seed=seed)
    x = torch.randn(batch, inputs, dtype=torch.float64, requires_grad=True)
    c = torch.randn(batch, width, dtype=torch.float64)
    layer = dqt.DEQ(f, batched=batched, **TIGHT)
    z = layer(x, torch.zeros(batch, width, dtype=torch.float64))
    torch.testing.assert_close(z, f(z, x), rtol=0, atol=1e-11)
    (z * c).sum().backward()
    dx, dW, _, _ = dense_ift_gradients(f, x, c)
    np.testing.assert_allclose(x.grad.numpy(), dx, rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(f.W.weight.grad.numpy(), dW, rtol=1e-7, atol=1e-10)


def test_one_step_and_phantom_gradients():
    f = cell(4, 3, norm=0.3, seed=3)
    x = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    z0 = torch.zeros(3, 4, dtype=torch.float64)
    one = dqt.DEQ(f, adjoint=dq.OneStepGradient(), **TIGHT)
    z = one(x, z0)
    (gx,) = torch.autograd.grad(z.sum(), x)
    zs = z.detach()
    (want,) = torch.autograd.grad(f(zs, x).sum(), x)            # λ ≈ g: one VJP at z*
    torch.testing.assert_close(gx, want)
    phantom = dqt.DEQ(f, adjoint=dq.PhantomGradient(steps=60, damping=1.0), **TIGHT)
    exact = dqt.DEQ(f, adjoint=dq.SteadyStateAdjoint(dq.LU()), **TIGHT)
    got = torch.autograd.grad(phantom(x, z0).sum(), (x, f.W.weight))
    ref = torch.autograd.grad(exact(x, z0).sum(), (x, f.W.weight))
    for g, w in zip(got, ref):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)


def test_float32_forward_backward_and_statistics():
    torch.manual_seed(4)
    f = dqt.example_cell(5, 5, norm=0.7, dtype=torch.float32)
    layer = dqt.DEQ(f, atol=1e-6, rtol=1e-6, max_steps=100)
    x = torch.randn(6, 5, requires_grad=True)
    z = layer(x)
    assert z.dtype == torch.float32
    assert torch.allclose(z, f(z, x), atol=1e-5)
    sol = layer.last_solution
    assert sol.stats["nfev"] >= 2 and sol.success.all() and np.all(sol.residual <= 1e-5)
    z.square().sum().backward()
    assert x.grad.dtype == torch.float32 and torch.isfinite(f.W.weight.grad).all()
    assert layer.last_adjoint is not None


def test_non_contiguous_and_requires_grad_inputs():
    f = cell(4)
    layer = dqt.DEQ(f, **TIGHT)
    base = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    x = base.t()                                                 # (3, 4), not contiguous
    assert not x.is_contiguous()
    torch.testing.assert_close(layer(x), layer(x.detach().contiguous()))


class _TiedCell(torch.nn.Module):
    """tanh(A z + A x + b) with one weight used twice (a tied parameter) and a frozen bias."""

    def __init__(self, width, norm, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.a = torch.nn.Linear(width, width, bias=False, dtype=torch.float64)
        self.b = torch.nn.Linear(width, width, bias=False, dtype=torch.float64)
        self.b.weight = self.a.weight                                    # the same Parameter twice
        self.c = torch.nn.Parameter(torch.randn(width, dtype=torch.float64), requires_grad=False)
        with torch.no_grad():
            self.a.weight.mul_(norm / torch.linalg.matrix_norm(self.a.weight, ord=2))

    def forward(self, z, x):
        return torch.tanh(self.a(z) + self.b(x) + self.c)


@pytest.mark.parametrize("x_grad", [True, False])
def test_tied_and_frozen_parameters_get_the_unrolled_gradient(x_grad):
    f = _TiedCell(5, norm=0.5, seed=6)
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=x_grad)
    c = torch.randn(3, 5, dtype=torch.float64)
    z0 = torch.zeros(3, 5, dtype=torch.float64)
    z = z0
    for _ in range(200):
        z = f(z, x)
    wrt = (x, f.a.weight) if x_grad else (f.a.weight,)
    want = torch.autograd.grad((z * c).sum(), wrt)
    layer = dqt.DEQ(f, **TIGHT)
    got = torch.autograd.grad((layer(x, z0) * c).sum(), wrt)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)
    (layer(x, z0) * c).sum().backward()
    assert f.c.grad is None                                          # frozen: no gradient


def test_one_graph_at_z_star_serves_every_adjoint_vjp():
    """The backward evaluates f once (with a graph at z*) however many VJPs its adjoint takes, and the gradients
    from that one graph are the dense implicit ones."""
    inner = cell(60, 6, norm=0.9, seed=8)       # 60 > DENSE_ADJOINT_LIMIT: the iterative adjoint on VJPs
    calls = {"graph": 0}

    class Counted(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = inner

        def forward(self, z, x):
            calls["graph"] += torch.is_grad_enabled()
            return self.inner(z, x)

    f = Counted()
    layer = dqt.DEQ(f, atol=0.0, rtol=1e-12, max_steps=300)
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    c = torch.randn(3, 60, dtype=torch.float64)
    (layer(x, torch.zeros(3, 60, dtype=torch.float64)) * c).sum().backward()
    assert calls["graph"] == 1 and layer.last_adjoint.nvjp >= 5
    assert layer.last_adjoint.success.all()
    dx, dW, dU, db = dense_ift_gradients(inner, x, c)
    for got, want in [(x.grad, dx), (inner.W.weight.grad, dW), (inner.U.weight.grad, dU), (inner.U.bias.grad, db)]:
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bad", [float("nan"), -float("inf")])
def test_a_non_finite_strided_start_is_named(dtype, bad):
    torch.manual_seed(7)
    layer = dqt.DEQ(dqt.example_cell(3, 2, dtype=dtype))
    z0 = torch.zeros(3, 2, dtype=dtype).t()                         # (2, 3), not contiguous
    z0[1, 2] = bad
    with pytest.raises(ValueError, match="z0 must be a non-empty tensor of finite numbers, got shape \\(2, 3\\) "
                                         "holding NaN or infinity"):
        layer(torch.ones(2, 2, dtype=dtype), z0)
    z0[1, 2] = torch.finfo(dtype).max                                 # the largest finite start is accepted
    assert torch.isfinite(layer(torch.ones(2, 2, dtype=dtype), z0)).all()


def test_training_step_lowers_loss():
    f = cell(6, 3, norm=0.5, seed=5)
    layer = dqt.DEQ(f, atol=1e-8, rtol=1e-8, max_steps=100)
    head = torch.nn.Linear(6, 1, dtype=torch.float64)
    x = torch.randn(32, 3, dtype=torch.float64)
    y = torch.sin(x.sum(1, keepdim=True))
    opt = torch.optim.Adam([*f.parameters(), *head.parameters()], lr=1e-2)
    z0 = torch.zeros(32, 6, dtype=torch.float64)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(head(layer(x, z0)), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0]


def test_torch_layer_matches_torch_and_shares_memory():
    model = nn.Dense(3, 2)
    params, state = nn.setup(np.random.default_rng(0), model)
    layer = dqt.TorchLayer(model, params, state)
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    weight, bias = (torch.from_numpy(params[k]) for k in ("weight", "bias"))
    torch.testing.assert_close(y, x @ weight.T + bias)
    c = torch.randn(4, 2, dtype=torch.float64)
    (y * c).sum().backward()
    torch.testing.assert_close(x.grad, c @ weight)
    grads = {k: p.grad for k, p in zip(params, layer.weights)}     # leaves in the tree's key order
    torch.testing.assert_close(grads["weight"], c.T @ x.detach())
    before = params["weight"].copy()
    torch.optim.SGD(layer.parameters(), lr=0.1).step()           # updates the NumPy arrays in place
    np.testing.assert_allclose(params["weight"], before - 0.1 * grads["weight"].numpy())


def test_torch_layer_gradcheck():
    model = nn.Chain(nn.Dense(3, 4, activation="tanh"), nn.Dense(4, 2))
    params, state = nn.setup(np.random.default_rng(1), model)
    layer = dqt.TorchLayer(model, params, state)
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, *w: layer(x), (x, *layer.weights))


def test_bad_inputs():
    f = cell(3)
    layer = dqt.DEQ(f, **TIGHT)
    with pytest.raises(TypeError, match="x has dtype float16"):
        layer(torch.ones(2, 3, dtype=torch.float16))
    with pytest.raises(TypeError, match="x has dtype bfloat16"):
        layer(torch.ones(2, 3, dtype=torch.bfloat16))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        layer(np.ones((2, 3)))
    with pytest.raises(ValueError, match="z0 is on meta"):
        layer(torch.ones(2, 3, dtype=torch.float64), torch.zeros(2, 3, dtype=torch.float64, device="meta"))
    with pytest.raises(TypeError, match="z0 has dtype"):
        layer(torch.ones(2, 3, dtype=torch.float64), torch.zeros(2, 3, dtype=torch.float32))
    with pytest.raises(ValueError, match="x must have shape \\(batch, ...\\)"):
        layer(torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="z0 must have the batch size"):
        layer(torch.ones(2, 3, dtype=torch.float64), torch.zeros(5, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"f\(z, x\) returned shape \(2, 2\) for z of shape \(2, 3\).*pass z0"):
        dqt.DEQ(lambda z, x: z[:, :2], **TIGHT)(torch.ones(2, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"returned dtype torch.float32 .* one dtype"):
        dqt.DEQ(lambda z, x: z.float(), **TIGHT)(torch.ones(2, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"x has dtype torch.float32 but f's parameter 'W.weight' has torch.float64"):
        layer(torch.ones(2, 3, dtype=torch.float32))
    with pytest.raises(TypeError, match="solver must be"):
        dqt.DEQ(f, solver="anderson")
    with pytest.raises(TypeError, match="adjoint must be"):
        dqt.DEQ(f, adjoint=dq.LU())
    with pytest.raises(ValueError, match="atol"):
        dqt.DEQ(f, atol=-1.0)
    with pytest.raises(TypeError, match="f must be"):
        dqt.DEQ(3)
    with pytest.raises(TypeError, match="model must be a deqcore.nn.Layer"):
        dqt.TorchLayer(f, {}, {})


def test_non_convergence_is_recorded_not_raised():
    f = cell(3, norm=0.99)
    layer = dqt.DEQ(f, solver=dq.FixedPointIteration(), atol=1e-14, rtol=0.0, max_steps=2)
    with pytest.warns(RuntimeWarning, match=r"forward solve of deqcore.interop.torch.DEQ failed for 2 of 2 "
                                            r"samples \(MAX_STEPS\)"):
        z = layer(torch.randn(2, 3, dtype=torch.float64))
    assert torch.isfinite(z).all()
    assert not layer.last_solution.success.any()
    assert dq.ReturnCode.MAX_STEPS in layer.last_solution.codes


def test_missing_torch_gives_install_hint():
    code = ("import sys; sys.modules['torch'] = None\n"
            "try:\n    import deqcore.interop.torch\nexcept ImportError as e:\n    print(e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "pip install deqcore[torch]" in out.stdout
