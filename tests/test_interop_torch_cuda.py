"""The PyTorch adapter on CUDA tensors: deqcore solves on CuPy views of them (DLPack both ways), and the forward
fixed point, the backward's gradients and the tensors' devices agree with a float64 reference on the host.
Skipped without a CUDA device (for torch and for CuPy)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import deqcore as dq  # noqa: E402
from deqcore.backend import cupy_available  # noqa: E402
from deqcore.interop import torch as dqt  # noqa: E402

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not (torch.cuda.is_available() and cupy_available()),
                                 reason="needs a CUDA device visible to torch and CuPy")]


def _reference(W, U, b, x, c):
    """z* and dL/d(x, W, U, b) for L = <c, z*>, z* = tanh(W z* + U x + b), per sample in float64 on the host
    (Newton for z*, one dense implicit-function-theorem solve per sample)."""
    z = np.zeros((x.shape[0], W.shape[0]))
    eye = np.eye(W.shape[0])
    grads = [np.zeros_like(x), np.zeros_like(W), np.zeros_like(U), np.zeros_like(b)]
    for i in range(x.shape[0]):
        for _ in range(50):
            fz = np.tanh(W @ z[i] + U @ x[i] + b)
            z[i] -= np.linalg.solve(eye - (1 - fz ** 2)[:, None] * W, z[i] - fz)
        s = 1 - z[i] ** 2
        mu = s * np.linalg.solve((eye - s[:, None] * W).T, c[i])
        grads[0][i] = U.T @ mu
        grads[1] += np.outer(mu, z[i])
        grads[2] += np.outer(mu, x[i])
        grads[3] += mu
    return z, grads


DEVICE = "cuda"


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 2e-4)])
@pytest.mark.parametrize("solver", [dq.Anderson(), dq.Broyden()], ids=["Anderson", "Broyden"])
@pytest.mark.parametrize("compact", [False, True], ids=["all-rows", "compact"])
def test_deq_on_cuda_matches_float64_reference(dtype, tol, solver, compact):
    """With ``compact=True`` the inputs' scales span four decades (saturated samples finish first and leave f's
    rows: CuPy gathers x's rows and hands them back to torch through DLPack)."""
    torch.manual_seed(0)
    f = dqt.example_cell(24, 8, norm=0.95 if compact else 0.8, dtype=dtype).to(DEVICE)
    double = dtype == torch.float64
    adjoint = dq.SteadyStateAdjoint(dq.GMRES(rtol=1e-10 if double else 1e-6, atol=0.0, max_steps=100))
    layer = dqt.DEQ(f, solver, adjoint, atol=1e-12 if double else 1e-6, rtol=0.0, max_steps=200, compact=compact)
    x = torch.randn(6, 8, dtype=dtype, device=DEVICE)
    if compact:
        x = x * torch.logspace(-2, 2, 6, dtype=dtype, device=DEVICE)[:, None]
    x.requires_grad_(True)
    c = torch.randn(6, 24, dtype=dtype, device=DEVICE)
    z = layer(x, torch.zeros(6, 24, dtype=dtype, device=DEVICE))
    assert z.device.type == DEVICE and z.dtype == dtype
    assert bool(layer.last_solution.success.all())
    stats = layer.last_solution.stats
    if compact:     # saturated samples leave f early in float64 (in float32 all six may run to the last step)
        assert stats["row_evaluations"] < 6 * stats["nfev"] if double else stats["row_evaluations"] <= 6 * stats["nfev"]
    else:
        assert stats["row_evaluations"] == 6 * stats["nfev"]
    (z * c).sum().backward()
    params = (f.W.weight, f.U.weight, f.U.bias)
    assert all(t.grad.device.type == DEVICE for t in (x, *params))
    host = [t.detach().double().cpu().numpy() for t in (f.W.weight, f.U.weight, f.U.bias, x, c)]
    z_ref, grads_ref = _reference(*host)
    np.testing.assert_allclose(z.detach().double().cpu().numpy(), z_ref, rtol=tol, atol=tol)
    for got, want in zip((x.grad, *(p.grad for p in params)), grads_ref):
        got = got.double().cpu().numpy()
        assert np.linalg.norm(got - want) <= 10 * tol * np.linalg.norm(want)


def test_views_share_device_memory_both_ways():
    """to_array gives a CuPy view of a CUDA tensor (no copy), from_array a tensor view of a CuPy array."""
    import cupy

    t = torch.arange(6, dtype=torch.float64, device="cuda")
    a = dqt.to_array(t, "t")
    assert isinstance(a, cupy.ndarray) and a.data.ptr == t.data_ptr()
    a[0] = 42.0
    assert float(t[0]) == 42.0
    back = dqt.from_array(a)
    assert back.device.type == "cuda" and back.data_ptr() == t.data_ptr()


def test_work_queued_on_a_side_stream_is_seen():
    """f runs on a non-default torch stream: the adapter's DLPack exchange must order the solve after it."""
    torch.manual_seed(1)
    f = dqt.example_cell(16, 4, norm=0.5).cuda()
    layer = dqt.DEQ(f, atol=1e-12, rtol=0.0, max_steps=100)
    x = torch.randn(3, 4, dtype=torch.float64, device="cuda")
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        z = layer(x, torch.zeros(3, 16, dtype=torch.float64, device="cuda"))
        residual = (f(z, x) - z).abs().max()
    torch.cuda.synchronize()
    assert float(residual) <= 1e-10
