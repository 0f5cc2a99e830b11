"""Optimisers against hand-computed steps (and PyTorch where installed), losses against finite
differences and SciPy, and a small MLP that learns the digits data set."""

import math

import numpy as np
import pytest
import scipy.special
from hypothesis import given
from hypothesis import strategies as st

from deqcore import nn
from tests.helpers import fd_gradient


def run(opt, grads, p0=1.0):
    params = {"w": np.array([p0])}
    state = opt.init(params)
    out = []
    for g in grads:
        params, state = opt.update({"w": np.array([g])}, state, params)
        out.append(params["w"][0])
    return out


def test_sgd_steps_by_hand():
    assert run(nn.SGD(lr=0.1), [2.0, 1.0]) == pytest.approx([0.8, 0.7])
    # v = 2 -> p = 1 - 0.2; v = 0.9*2 + 1 = 2.8 -> p = 0.8 - 0.28
    assert run(nn.SGD(lr=0.1, momentum=0.9), [2.0, 1.0]) == pytest.approx([0.8, 0.52])
    # Nesterov: step g + 0.9 v = 2 + 1.8 -> 1 - 0.38; then v = 2.8, step 1 + 2.52 -> 0.62 - 0.352
    assert run(nn.SGD(lr=0.1, momentum=0.9, nesterov=True), [2.0, 1.0]) == pytest.approx([0.62, 0.268])


def test_adam_and_adamw_steps_by_hand():
    eps = 1e-8
    m1, v1 = 0.1 * 2.0, 0.001 * 4.0
    p1 = 1 - 0.1 * (m1 / 0.1) / (math.sqrt(v1 / 0.001) + eps)
    m2, v2 = 0.9 * m1 + 0.1 * (-1.0), 0.999 * v1 + 0.001 * 1.0
    p2 = p1 - 0.1 * (m2 / (1 - 0.9 ** 2)) / (math.sqrt(v2 / (1 - 0.999 ** 2)) + eps)
    assert run(nn.Adam(lr=0.1), [2.0, -1.0]) == pytest.approx([p1, p2], rel=1e-12)
    q1 = 1 - 0.1 * ((m1 / 0.1) / (math.sqrt(v1 / 0.001) + eps) + 0.1 * 1.0)
    assert run(nn.AdamW(lr=0.1, weight_decay=0.1), [2.0])[0] == pytest.approx(q1, rel=1e-12)
    assert nn.AdamW().weight_decay == 0.01


@pytest.mark.parametrize("name", ["sgd", "nesterov", "adam", "adamw"])
def test_optimisers_match_torch(name):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    p0, grads = rng.standard_normal(5), rng.standard_normal((6, 5))
    sched = nn.cosine_schedule(0.05, total_steps=6, warmup_steps=2)
    ours = {"sgd": nn.SGD(lr=sched, momentum=0.8), "nesterov": nn.SGD(lr=0.05, momentum=0.8, nesterov=True),
            "adam": nn.Adam(lr=sched, b1=0.8, b2=0.95), "adamw": nn.AdamW(lr=0.05, weight_decay=0.3)}[name]
    tp = torch.nn.Parameter(torch.tensor(p0))
    theirs = {"sgd": lambda: torch.optim.SGD([tp], lr=1.0, momentum=0.8),
              "nesterov": lambda: torch.optim.SGD([tp], lr=0.05, momentum=0.8, nesterov=True),
              "adam": lambda: torch.optim.Adam([tp], lr=1.0, betas=(0.8, 0.95)),
              "adamw": lambda: torch.optim.AdamW([tp], lr=0.05, weight_decay=0.3)}[name]()
    params = {"w": p0.copy()}
    state = ours.init(params)
    for step, g in enumerate(grads):
        params, state = ours.update({"w": g}, state, params)
        if name in ("sgd", "adam"):
            for group in theirs.param_groups:
                group["lr"] = sched(step)
        tp.grad = torch.tensor(g)
        theirs.step()
    np.testing.assert_allclose(params["w"], tp.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_clip_and_schedule():
    grads = {"a": np.array([3.0, 0.0]), "b": {"c": np.array([[4.0]])}}
    clipped, norm = nn.clip_by_global_norm(grads, 2.5)
    assert float(norm) == pytest.approx(5.0)
    np.testing.assert_allclose(nn.ravel(clipped)[0], [1.5, 0.0, 2.0])
    same, _ = nn.clip_by_global_norm(grads, 10.0)
    np.testing.assert_array_equal(nn.ravel(same)[0], nn.ravel(grads)[0])
    sched = nn.cosine_schedule(1e-3, total_steps=110, warmup_steps=10, final_lr=1e-5)
    assert sched(4) == pytest.approx(5e-4)
    assert sched(10) == pytest.approx(1e-3)
    assert sched(60) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5))
    assert sched(110) == pytest.approx(1e-5) and sched(500) == pytest.approx(1e-5)
    with pytest.raises(ValueError, match="warmup_steps"):
        nn.cosine_schedule(1.0, total_steps=5, warmup_steps=5)
    with pytest.raises(ValueError, match="b2 must lie in"):
        nn.Adam(b2=1.0)
    with pytest.raises(ValueError, match="nesterov=True needs momentum"):
        nn.SGD(nesterov=True)


@given(seed=st.integers(0, 2 ** 32 - 1), batch=st.integers(1, 5), classes=st.integers(2, 6),
       soft=st.booleans(), scale=st.sampled_from([1.0, 30.0]))
def test_cross_entropy_gradient_and_value(seed, batch, classes, soft, scale):
    rng = np.random.default_rng(seed)
    logits = scale * rng.standard_normal((batch, classes))
    labels = rng.dirichlet(np.ones(classes), size=batch) if soft else rng.integers(0, classes, batch)
    value, grad = nn.softmax_cross_entropy(logits, labels)
    targets = labels if soft else np.eye(classes)[labels]
    want = -np.mean(np.sum(targets * scipy.special.log_softmax(logits, axis=1), axis=1))
    assert float(value) == pytest.approx(want, rel=1e-12, abs=1e-12)
    eps = 1e-6 * scale
    fd = fd_gradient(lambda z: float(nn.softmax_cross_entropy(z, labels)[0]), logits, eps)
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-7)


def test_losses_are_stable_and_checked():
    value, grad = nn.softmax_cross_entropy(np.array([[1000.0, -1000.0]]), np.array([1]))
    assert float(value) == pytest.approx(2000.0) and np.all(np.isfinite(grad))
    rng = np.random.default_rng(1)
    pred, target = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    value, grad = nn.mse(pred, target)
    assert float(value) == pytest.approx(np.mean((pred - target) ** 2))
    fd = fd_gradient(lambda p: float(nn.mse(p, target)[0]), pred)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="labels must be integer class indices"):
        nn.softmax_cross_entropy(np.zeros((2, 3)), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="shapes differ"):
        nn.mse(np.zeros(2), np.zeros(3))


def test_small_mlp_learns_digits():
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    x, y = digits.data / 16.0, digits.target
    order = np.random.default_rng(0).permutation(len(y))
    train, test = order[:1300], order[1300:]
    model = nn.Chain(nn.Dense(64, 64, "relu"), nn.Dense(64, 10))
    rng = np.random.default_rng(0)
    params, state = nn.setup(rng, model)
    opt = nn.Adam(lr=3e-3)
    opt_state = opt.init(params)
    for epoch in range(8):
        shuffled = rng.permutation(train)
        for start in range(0, len(train), 64):
            idx = shuffled[start:start + 64]
            logits, pullback, state = nn.vjp(model, x[idx], params, state)
            _, dlogits = nn.softmax_cross_entropy(logits, y[idx])
            _, grads = pullback(dlogits)
            params, opt_state = opt.update(grads, opt_state, params)
    logits, _ = model(x[test], params, nn.testmode(state))
    assert float(nn.accuracy(logits, y[test])) >= 0.9
