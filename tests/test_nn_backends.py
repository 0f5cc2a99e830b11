"""Layers give the same values and derivatives on every array namespace (NumPy always; CuPy where a GPU
is present), with parameters moved by ``nn.to_namespace`` or created by ``nn.setup(..., xp=)``."""

import numpy as np
import pytest

from deqcore import nn
from deqcore.backend import to_host

CASES = [
    (lambda: nn.Dense(5, 4, "gelu", weight_norm=True), (3, 5)),
    (lambda: nn.Dense(5, 4, "elu", spectral_norm=True), (3, 5)),
    (lambda: nn.Conv2d(2, 3, 3, stride=2, padding=1, activation="softplus"), (2, 2, 7, 6)),
    (lambda: nn.Chain(nn.Conv2d(2, 4, 3, padding="same"), nn.GroupNorm(4, 2), nn.Upsample(2),
                      nn.BatchNorm(4), nn.Flatten(), nn.Dropout(0.3), nn.Dense(256, 3), nn.LayerNorm(3)),
     (2, 2, 4, 4)),
    (lambda: nn.Parallel(nn.concat, nn.Dense(3, 2, "sigmoid"), nn.Chain(nn.Dense(3, 2, "relu"),
                                                                       nn.Reshape((1, 2)), nn.Flatten())),
     (4, 3)),
]


def _host(tree):
    return nn.tree_map(lambda a: to_host(a) if hasattr(a, "shape") else a, tree)


@pytest.mark.parametrize("case", range(len(CASES)))
def test_layers_agree_across_namespaces(xp, case):
    build, shape = CASES[case]
    model = build()
    rng = np.random.default_rng(case)
    params, state = nn.setup(np.random.default_rng(7), model)
    x = rng.standard_normal(shape)
    y_ref, pullback_ref, state_ref = nn.vjp(model, x, params, state)
    dy = rng.standard_normal(y_ref.shape)
    dx = rng.standard_normal(shape)
    dx_ref, dp_ref = pullback_ref(dy)
    _, jvp_ref = nn.jvp(model, x, params, state, dx)

    dev_params, dev_state = nn.setup(np.random.default_rng(7), model, xp=xp)
    np.testing.assert_array_equal(nn.ravel(_host(dev_params))[0], nn.ravel(params)[0])
    y, pullback, new_state = nn.vjp(model, xp.asarray(x), dev_params, dev_state)
    assert type(y) is type(xp.asarray(x))
    gx, gp = pullback(xp.asarray(dy))
    _, jv = nn.jvp(model, xp.asarray(x), dev_params, dev_state, xp.asarray(dx))
    np.testing.assert_allclose(to_host(y), y_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(to_host(gx), dx_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(nn.ravel(_host(gp))[0], nn.ravel(dp_ref)[0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(to_host(jv), jvp_ref, rtol=1e-10, atol=1e-12)
    for (path, got), (_, want) in zip(nn.tree_paths(_host(new_state)), nn.tree_paths(state_ref)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, err_msg=path)


def test_optimiser_and_loss_stay_on_namespace(xp):
    rng = np.random.default_rng(0)
    params = nn.to_namespace({"w": rng.standard_normal((3, 2)), "b": rng.standard_normal(2)}, xp)
    logits = xp.asarray(rng.standard_normal((4, 2)))
    value, grad = nn.softmax_cross_entropy(logits, xp.asarray(np.array([0, 1, 1, 0])))
    grads, norm = nn.clip_by_global_norm({"w": xp.ones((3, 2)), "b": grad.sum(axis=0)}, 1.0)
    opt = nn.Adam(lr=nn.cosine_schedule(1e-2, 10, warmup_steps=1))
    new, _ = opt.update(grads, opt.init(params), params)
    for leaf in nn.tree_leaves(new) + [value, norm]:
        assert type(leaf) is type(logits) or (xp is np and np.ndim(leaf) == 0)
