"""Shared derivative checks for the nn tests (no tests here): JVPs against central finite differences
and the adjoint identity <u, J v> = <Jᵀu, v> linking each layer's VJP to its JVP."""

import numpy as np

from deqcore import nn

from tests.helpers import fd_jvp_tree


def random_like(tree, rng):
    return nn.tree_map(lambda a: rng.standard_normal(a.shape), tree)


def check_layer_derivatives(layer, x, params, state, rng, rtol=1e-6, eps=1e-6):
    """Assert the layer's JVP matches central differences and its VJP satisfies the adjoint identity."""
    dx = random_like(x, rng)
    dp = random_like(params, rng)

    fd = fd_jvp_tree(lambda xp: layer(xp[0], xp[1], state)[0], (x, params), (dx, dp), eps)
    y, dy = nn.jvp(layer, x, params, state, dx, dp)
    y_call = layer(x, params, state)[0]
    for got, want in zip(nn.tree_leaves(y), nn.tree_leaves(y_call)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    scale = max(1.0, max(float(np.abs(a).max()) for a in nn.tree_leaves(fd)))
    for got, want in zip(nn.tree_leaves(dy), nn.tree_leaves(fd)):
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale)

    # tangent of the inputs alone (dparams=None means zero)
    fd_x = fd_jvp_tree(lambda x_: layer(x_, params, state)[0], x, dx, eps)
    _, dy_x = nn.jvp(layer, x, params, state, dx)
    for got, want in zip(nn.tree_leaves(dy_x), nn.tree_leaves(fd_x)):
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale)

    y2, pullback, _ = nn.vjp(layer, x, params, state)
    for got, want in zip(nn.tree_leaves(y2), nn.tree_leaves(y_call)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    u = random_like(y2, rng)
    gx, gp = pullback(u)
    assert nn.tree_map(np.shape, gp) == nn.tree_map(np.shape, params)
    assert nn.tree_map(np.shape, gx) == nn.tree_map(np.shape, x)
    lhs = float(nn.tree_dot(u, fd))
    rhs = float(nn.tree_dot(gx, dx)) + float(nn.tree_dot(gp, dp))
    np.testing.assert_allclose(rhs, lhs, rtol=rtol * 10, atol=rtol * scale * 10)
    # adjoint identity between the layer's own VJP and JVP (exact up to rounding)
    np.testing.assert_allclose(rhs, float(nn.tree_dot(u, dy)), rtol=1e-9, atol=1e-9 * scale)
