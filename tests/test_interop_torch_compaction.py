"""Active-set compaction through the PyTorch adapter (``DEQ(..., compact=True)``): the same codes, fixed points
and gradients as the uncompacted solve, fewer rows evaluated, a NaN sample failing alone."""

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import deqcore as dq  # noqa: E402
from deqcore.interop import torch as dqt  # noqa: E402

BATCH, WIDTH, INPUTS = 12, 10, 6
TOL = dict(atol=1e-11, rtol=0.0, max_steps=300)


class HardCell(torch.nn.Module):
    """f(z, x) = tanh(W z + U x + b) with W of spectral radius 1.5; records the rows of every call."""

    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        W = torch.randn(WIDTH, WIDTH, generator=g, dtype=torch.float64)
        W *= 1.5 / torch.linalg.eigvals(W).abs().max()
        self.W = torch.nn.Parameter(W)
        self.U = torch.nn.Parameter(torch.randn(WIDTH, INPUTS, generator=g, dtype=torch.float64))
        self.b = torch.nn.Parameter(0.1 * torch.randn(WIDTH, generator=g, dtype=torch.float64))
        self.rows = []

    def forward(self, z, x):
        if not torch.is_grad_enabled():                # the forward solve's calls
            self.rows.append(z.shape[0])
        return torch.tanh(z @ self.W.T + x @ self.U.T + self.b)


def inputs(nan_row=None):
    """x with per-sample scales over three decades: large inputs saturate tanh (samples that finish early), small
    ones leave the iteration near z = 0, where the map's Jacobian is W (slow samples)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, INPUTS, generator=g, dtype=torch.float64) * torch.logspace(-2, 1, BATCH,
                                                                                      dtype=torch.float64)[:, None]
    if nan_row is not None:
        x[nan_row, 0] = float("nan")
    return x


def run(compact, solver, x):
    """(z*, codes, dx, {name: dparam}, rows evaluated per forward call, the layer)."""
    f = HardCell()
    layer = dqt.DEQ(f, solver, compact=compact, **TOL)
    x = x.clone().requires_grad_(True)
    c = torch.randn(BATCH, WIDTH, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "the (forward|adjoint) solve", RuntimeWarning)
        z = layer(x, torch.zeros(BATCH, WIDTH, dtype=torch.float64))
        (torch.nan_to_num(z) * c).sum().backward()
    grads = {name: p.grad for name, p in f.named_parameters()}
    return z.detach(), np.asarray(layer.last_solution.result), x.grad, grads, list(f.rows), layer


@pytest.mark.parametrize("solver", [dq.Anderson(), dq.Broyden(), dq.FixedPointIteration()],
                         ids=lambda s: type(s).__name__)
def test_compaction_matches_the_full_solve_with_fewer_rows(solver):
    x = inputs()
    z0, codes0, dx0, g0, rows0, layer0 = run(False, solver, x)
    z1, codes1, dx1, g1, rows1, layer1 = run(True, solver, x)
    np.testing.assert_array_equal(codes1, codes0)
    ok = codes0 == 0
    assert ok.sum() >= BATCH // 2                  # (plain iteration diverges on the slowest samples of this map)
    torch.testing.assert_close(z1[ok], z0[ok], rtol=0, atol=1e-9)
    # the gradients against the uncompacted solve's (the same implicit gradient, to the solves' accuracy)
    torch.testing.assert_close(dx1[ok], dx0[ok], rtol=1e-6, atol=1e-8)
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-6, atol=1e-8)
    # f saw fewer rows; the counts agree with what f recorded
    assert max(rows0) == min(rows0) == BATCH
    assert min(rows1) < BATCH
    stats0, stats1 = layer0.last_solution.stats, layer1.last_solution.stats
    assert stats0["row_evaluations"] == sum(rows0) == BATCH * stats0["nfev"]
    assert stats1["row_evaluations"] == sum(rows1) < stats0["row_evaluations"]


def test_a_nan_sample_fails_alone_with_compaction():
    x = inputs(nan_row=3)
    z, codes, dx, grads, _, _ = run(True, dq.Anderson(), x)
    z_clean, codes_clean, *_ = run(True, dq.Anderson(), inputs())
    assert codes[3] == dq.ReturnCode.DIVERGED
    others = np.arange(BATCH) != 3
    np.testing.assert_array_equal(codes[others], codes_clean[others])
    assert codes[others].tolist() == [0] * (BATCH - 1)
    torch.testing.assert_close(z[others], z_clean[others], rtol=0, atol=1e-9)
    assert torch.isfinite(z[others]).all()
    assert torch.isfinite(dx[torch.as_tensor(others)]).all()


def test_compact_needs_batched_and_a_bool():
    with pytest.raises(ValueError, match="compact=True .* batched=True"):
        dqt.DEQ(HardCell(), compact=True, batched=False)
    with pytest.raises(TypeError, match="compact must be True or False"):
        dqt.DEQ(HardCell(), compact="yes")
    assert "compact=True" in repr(dqt.DEQ(HardCell(), compact=True))
