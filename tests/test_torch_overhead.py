"""What the torch adapter's fast path vouches for: ``checked_fixed_point`` (y0 checked finite by the caller, fn
checking its own outputs) solves exactly as ``fixed_point``, still checks what it was not told, and the adapter
still names an f whose output changes part-way through a solve."""

import numpy as np
import pytest

import deqcore as dq
from deqcore.root.api import checked_fixed_point

torch = pytest.importorskip("torch")

from deqcore.interop import torch as dqt  # noqa: E402


def _cell_map(batch=5, n=4, seed=0):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((n, n))
    W *= 0.8 / np.linalg.norm(W, 2)
    x = rng.standard_normal((batch, n))
    return (lambda z: np.tanh(z @ W.T + x)), np.zeros((batch, n))


@pytest.mark.parametrize("solver", [dq.Anderson(), dq.FixedPointIteration(), dq.Broyden()],
                         ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_checked_fixed_point_is_fixed_point_bit_for_bit(solver, dtype):
    fn, z0 = _cell_map()
    z0 = z0.astype(dtype)
    cast = lambda z: fn(z).astype(dtype)  # noqa: E731
    options = dict(atol=0.0, rtol=1e-5, max_steps=100, batched=True, throw=False)
    reference = dq.fixed_point(cast, z0, solver, **options)
    fast = checked_fixed_point(cast, z0, solver, finite=True, conforming=True, **options)
    assert np.array_equal(fast.value, reference.value) and fast.value.dtype == dtype
    assert fast.result.tolist() == reference.result.tolist() and np.array_equal(fast.residual, reference.residual)
    assert fast.stats == reference.stats
    exact = np.asarray(dq.fixed_point(fn, np.zeros((5, 4)), atol=1e-13, rtol=0.0, batched=True).value)
    assert np.max(np.abs(fast.value - exact)) <= 1e-4


def test_what_checked_fixed_point_was_not_told_is_still_checked():
    fn, z0 = _cell_map()
    calls = {"n": 0}

    def late_wrong_shape(z, *args):
        calls["n"] += 1
        out = fn(z.reshape(5, 4)).reshape(z.shape)
        return out[..., :1] if calls["n"] == 3 else out

    # a y0 of another shape than (B, n), or extra args: fn's outputs are checked on every call even so
    with pytest.raises(ValueError, match="fn"):
        checked_fixed_point(late_wrong_shape, z0.reshape(5, 2, 2), dq.FixedPointIteration(), atol=0.0, rtol=0.0,
                            max_steps=10, batched=True, conforming=True, finite=True)
    calls["n"] = 0
    with pytest.raises(ValueError, match="fn"):
        checked_fixed_point(late_wrong_shape, z0, dq.FixedPointIteration(), args=(np.ones(1),), atol=0.0, rtol=0.0,
                            max_steps=10, batched=True, conforming=True, finite=True)
    # the first output is always checked, and y0 unless the caller vouches for it
    with pytest.raises(ValueError, match="fn"):
        checked_fixed_point(lambda z: z[:, :2], z0, batched=True, conforming=True, finite=True)
    bad = z0.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="y0 contains NaN"):
        checked_fixed_point(fn, bad, batched=True, conforming=True)
    with pytest.raises(TypeError, match="solver must be"):
        checked_fixed_point(fn, z0, "anderson", finite=True, conforming=True)


@pytest.mark.parametrize("change", ["shape", "dtype"])
def test_adapter_names_an_f_whose_output_changes_part_way(change):
    torch.manual_seed(0)
    cell = dqt.example_cell(4, 3)
    calls = {"n": 0}

    def f(z, x):
        calls["n"] += 1
        out = cell(z, x)
        if calls["n"] == 4:      # inside the compiled loop, after the checked start
            return out[:, :2] if change == "shape" else out.float()
        return out

    layer = dqt.DEQ(f, atol=1e-12, rtol=0.0, max_steps=50)
    error = ValueError if change == "shape" else TypeError
    with pytest.raises(error, match=r"f\(z, x\) returned (shape \(2, 2\)|dtype torch.float32)"):
        layer(torch.randn(2, 3, dtype=torch.float64), torch.zeros(2, 4, dtype=torch.float64))
    assert calls["n"] == 4


def test_adapter_adjoint_uses_the_z_only_vjp_once_per_counted_vjp():
    """The adjoint's VJPs go through the z-only pullback (no θ part); each is counted once and the gradient is
    the dense implicit one."""
    torch.manual_seed(1)
    f = dqt.example_cell(6, 3, norm=0.7)
    layer = dqt.DEQ(f, atol=1e-12, rtol=0.0, max_steps=200)
    x = torch.randn(4, 3, dtype=torch.float64)
    z = layer(x, torch.zeros(4, 6, dtype=torch.float64))
    c = torch.randn(4, 6, dtype=torch.float64)
    engine_calls = {"n": 0}
    original = dqt._grad

    def counting(*args, **kwargs):
        engine_calls["n"] += 1
        return original(*args, **kwargs)

    dqt._grad = counting
    try:
        (z * c).sum().backward()
    finally:
        dqt._grad = original
    info = layer.last_adjoint
    assert info.success.all() and engine_calls["n"] == info.nvjp + 1      # + the parameter VJP
    W, U, b = (t.detach().numpy() for t in (f.W.weight, f.U.weight, f.U.bias))
    zs = z.detach().numpy()
    dW = np.zeros_like(W)
    for i in range(4):
        s = 1 - zs[i] ** 2
        lam = np.linalg.solve((np.eye(6) - s[:, None] * W).T, c[i].numpy())
        dW += np.outer(s * lam, zs[i])
    assert np.allclose(f.W.weight.grad.numpy(), dW, rtol=1e-8, atol=1e-10)


def test_vjp_views_follow_their_arrays_contents():
    """The adjoint's VJP keeps tensor views of the arrays it is given: an array rewritten in place gives the VJP
    of its new contents, and arrays past the kept few, strided or read-only ones are still right."""
    torch.manual_seed(2)
    W = torch.randn(3, 3, dtype=torch.float64)
    z = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    with torch.enable_grad():
        fz = z @ W.T
    vjp = dqt._z_vjp(fz, z)
    buffer = np.ones((2, 3))
    assert np.allclose(vjp(buffer), buffer @ W.numpy())
    buffer[:] = np.arange(6.0).reshape(2, 3)              # the same array, new contents
    assert np.allclose(vjp(buffer), buffer @ W.numpy())
    for k in range(2 * dqt._VIEWS_KEPT):                   # more arrays than are kept
        v = np.full((2, 3), float(k))
        assert np.allclose(vjp(v), v @ W.numpy())
    strided = np.arange(12.0).reshape(2, 6)[:, ::2]
    read_only = np.arange(6.0).reshape(2, 3)
    read_only.flags.writeable = False
    for v in (strided, read_only, strided):
        assert np.allclose(vjp(v), v @ W.numpy())
    buffer[:] = -1.0
    assert np.allclose(vjp(buffer), buffer @ W.numpy())
