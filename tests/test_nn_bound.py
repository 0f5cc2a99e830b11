"""Layers bound to their parameters (``nn.bind``), input pullbacks built once (``input_fn``) and layers
linearised at a point (``linearize``) against the unbound calls, bit for bit; a DEQ solved through its bound f
against the same DEQ through the layers' public calls (the same NFE, codes and gradients), and its gradient
against central differences."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import deqcore as dq
from deqcore import nn
from deqcore.nn.activation_kernels import activation_value_fn, fused_activation
from deqcore.nn.core import input_pullback, partial_pullback

ACTS = sorted(nn.ACTIVATIONS)
SCHEMES = [{}, {"weight_norm": True}, {"spectral_norm": True}]


def _same(a, b):
    if isinstance(a, tuple):
        return isinstance(b, tuple) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b)


def _deq_f(width, act="tanh", **scheme):
    return nn.Chain(nn.Parallel(nn.add, nn.Dense(width, width, use_bias=False, **scheme), nn.NoOpLayer()),
                    nn.Activation(act))


def _layers(width):
    """(name, layer, input maker) covering every container path of bind and input_fn."""
    pair = lambda rng, b: (rng.standard_normal((b, width)), rng.standard_normal((b, width)))     # noqa: E731
    one = lambda rng, b: rng.standard_normal((b, width))                                         # noqa: E731
    return [
        ("deq form", _deq_f(width, weight_norm=True), pair),
        ("deq form, biased U", nn.Chain(nn.Parallel(nn.add, nn.Dense(width, width, use_bias=False),
                                                    nn.Dense(width, width, "relu")), nn.Activation("gelu")), pair),
        ("parallel broadcast add", nn.Parallel(nn.add, nn.Dense(width, 3, "sigmoid"), nn.Dense(width, 3)), one),
        ("three-way add", nn.Parallel(nn.add, nn.Dense(width, 2), nn.Dense(width, 2, "elu"),
                                      nn.Dense(width, 2, use_bias=False)), one),
        ("concat", nn.Parallel(nn.concat, nn.Dense(width, 2, "softplus"), nn.NoOpLayer()), one),
        ("tuple out", nn.Parallel(None, nn.Dense(width, 2), nn.Activation("tanh")), one),
        ("deep chain", nn.Chain(nn.Dense(width, 4, "tanh"), nn.Dense(4, 4, weight_norm=True),
                                nn.Activation("relu"), nn.Dense(4, 3, spectral_norm=True), nn.LayerNorm(3)), one),
        ("reshape", nn.Chain(nn.Reshape((1, width)), nn.Flatten()), one),
    ]


@pytest.mark.parametrize("case", range(len(_layers(2))), ids=lambda i: _layers(2)[i][0])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_bound_layer_and_input_pullback_equal_the_unbound_calls(case, dtype):
    width = 5
    _, layer, make = _layers(width)[case]
    rng = np.random.default_rng(case)
    params, state = nn.setup(rng, layer, dtype=dtype)
    for batch in (1, 300):                         # 300 x 5: above the activations' NumPy-formula sizes
        x = make(rng, batch)
        x = tuple(a.astype(dtype) for a in x) if isinstance(x, tuple) else x.astype(dtype)
        assert _same(nn.bind(layer, params, state)(x), layer(x, params, state)[0])
        y, pullback, _ = layer.vjp(x, params, state)
        dy = tuple(rng.standard_normal(a.shape).astype(dtype) for a in y) if isinstance(y, tuple) else \
            rng.standard_normal(y.shape).astype(dtype)
        full = pullback(dy)[0]
        dx = tuple(rng.standard_normal(a.shape).astype(dtype) for a in x) if isinstance(x, tuple) else \
            rng.standard_normal(x.shape).astype(dtype)
        y_lin, tangent = layer.linearize(x, params, state)
        assert _same(y_lin, y) and _same(tangent(dx), layer.jvp(x, params, state, dx)[1])
        assert _same(input_pullback(pullback)(dy), full)
        if isinstance(x, tuple):
            for wanted in ((True, False), (False, True), (True, True)):
                got = input_pullback(pullback, wanted)(dy)
                assert _same(got, tuple(f if w else None for f, w in zip(full, wanted)))
                assert _same(got, pullback.input_only(dy, wanted))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2 ** 32 - 1), act=st.sampled_from(ACTS), use_bias=st.booleans(),
       scheme=st.sampled_from(SCHEMES), rows=st.sampled_from([1, 3, 40, 600]), extra_axis=st.booleans(),
       float32=st.booleans())
def test_bound_dense_equals_dense(seed, act, use_bias, scheme, rows, extra_axis, float32):
    dtype = np.float32 if float32 else np.float64
    layer = nn.Dense(4, 6, act, use_bias=use_bias, **scheme)
    rng = np.random.default_rng(seed)
    params, state = nn.setup(rng, layer, dtype=dtype)
    x = rng.standard_normal((rows, 2, 4) if extra_axis else (rows, 4)).astype(dtype)
    assert _same(layer.bind(params, state)(x), layer(x, params, state)[0])
    y, pullback, _ = layer.vjp(x, params, state)
    dy = rng.standard_normal(y.shape).astype(dtype)
    assert _same(input_pullback(pullback)(dy), pullback(dy)[0])
    dx = rng.standard_normal(x.shape).astype(dtype)
    assert _same(layer.linearize(x, params, state)[1](dx), layer.jvp(x, params, state, dx)[1])


@pytest.mark.parametrize("name", ACTS)
def test_activation_value_fn_equals_fused_activation(name):
    rng = np.random.default_rng(1)
    for dtype in (np.float32, np.float64):
        bias = rng.standard_normal(16).astype(dtype)
        for shape in ((3, 16), (700, 16), (2, 16, 300)):
            z = (rng.standard_normal(shape) * 4).astype(dtype)
            for b, axis in ((None, -1), (bias, 1), (bias if len(shape) == 2 else None, -1)):
                fast = activation_value_fn(name, b, axis)
                assert _same(fast(z), fused_activation(z, name, b, axis, derivative=False))
                view = z[::2]                                        # not C-contiguous: the general path
                assert _same(fast(view), fused_activation(view, name, b, axis, derivative=False))
        with pytest.raises(ValueError, match="bias"):
            activation_value_fn(name, bias, -1)(np.ones((2, 3), dtype))


@pytest.mark.parametrize("name", ACTS)
def test_activation_bound_vjp_equals_its_vjp(name):
    """An activation's bound VJP (its kernel chosen once) against its VJP, bit for bit: below and above the
    sizes where the kernel takes over from NumPy, both dtypes, a strided input (the general path), and the
    pullbacks."""
    rng = np.random.default_rng(2)
    layer = nn.Activation(name)
    bound = layer.bind_vjp({}, {})
    for dtype in (np.float32, np.float64):
        for shape in ((3, 16), (700, 16), (2, 16, 300)):
            z = (rng.standard_normal(shape) * 4).astype(dtype)
            for x in (z, z[::2]):
                (y, pullback, _), (y_b, pullback_b, _) = layer.vjp(x, {}, {}), bound(x)
                dy = rng.standard_normal(y.shape).astype(dtype)
                assert _same(y_b, y) and _same(pullback_b(dy)[0], pullback(dy)[0])
                assert _same(input_pullback(pullback_b)(dy), input_pullback(pullback)(dy))
                got, want = partial_pullback(pullback_b, True)(dy), partial_pullback(pullback, True)(dy)
                assert _same(got[0], want[0])
    with pytest.raises(TypeError):
        bound([1.0, 2.0])


def _unbound(deq):
    """The same DEQ whose f runs through the layers' public calls on every evaluation."""
    model = deq.model
    model.bind = lambda params, state: (lambda x: model(x, params, state)[0])
    return deq


@pytest.mark.parametrize("variant", ["anderson", "compact", "skip-reg", "broyden-wn-spectral"])
def test_deq_through_bound_f_equals_unbound(variant):
    width, batch = 6, 5
    scheme = {"spectral_norm": True} if variant.endswith("spectral") else {"weight_norm": True}
    solver = dq.Broyden() if variant.startswith("broyden") else dq.Anderson()
    settings_ = dict(atol=1e-9, rtol=1e-9, max_steps=60, compact=variant == "compact")
    if variant == "skip-reg":
        build = lambda: dq.SkipDeepEquilibriumNetwork(_deq_f(width, **scheme), None, solver,    # noqa: E731
                                                      **settings_)
    else:
        build = lambda: dq.DeepEquilibriumNetwork(_deq_f(width, **scheme), solver, **settings_)  # noqa: E731
    deqs = {"bound": build(), "unbound": _unbound(build())}
    rng = np.random.default_rng(3)
    params, state = nn.setup(rng, deqs["bound"])
    if "weight_norm" in scheme:                           # W = g V / ‖V‖: g sets the contraction
        params["model"]["layer_1"]["layer_1"]["weight_g"] *= 0.4
    x = rng.standard_normal((batch, width)) * np.linspace(0.1, 3.0, batch)[:, None]
    dy = rng.standard_normal((batch, width))
    out = {}
    for name, deq in deqs.items():
        z, pullback, new_state = nn.vjp(deq, x, params, state)
        out[name] = (z, new_state["solution"], pullback(dy))
    (z_b, sol_b, (dx_b, dp_b)), (z_u, sol_u, (dx_u, dp_u)) = out["bound"], out["unbound"]
    assert sol_b.nfev == sol_u.nfev and sol_b.adjoint.nvjp == sol_u.adjoint.nvjp
    assert np.array_equal(sol_b.result, sol_u.result) and bool(np.all(sol_b.success))
    np.testing.assert_allclose(z_b, z_u, rtol=1e-12, atol=0)
    grads_b = np.concatenate([nn.ravel(dp_b)[0], dx_b.ravel()])
    grads_u = np.concatenate([nn.ravel(dp_u)[0], dx_u.ravel()])
    assert np.linalg.norm(grads_b - grads_u) <= 1e-12 * np.linalg.norm(grads_u)


def test_bound_deq_gradient_matches_finite_differences():
    width = 3
    deq = dq.DeepEquilibriumNetwork(_deq_f(width, weight_norm=True), dq.Anderson(), atol=1e-12, rtol=1e-12,
                                    max_steps=500, adjoint=dq.SteadyStateAdjoint(linear_solver=dq.LU()))
    rng = np.random.default_rng(0)
    params, state = nn.setup(rng, deq)
    params["model"]["layer_1"]["layer_1"]["weight_g"] *= 0.4
    x = rng.standard_normal((2, width))
    c = rng.standard_normal((2, width))
    _, pullback, new_state = nn.vjp(deq, x, params, state)
    assert bool(np.all(new_state["solution"].success))
    dx, dparams = pullback(c)
    vec, unravel = nn.ravel(params)
    grad = np.concatenate([nn.ravel(dparams)[0], dx.ravel()])

    def loss(v):
        return float(np.sum(deq(x + v[vec.size:].reshape(x.shape), unravel(vec + v[:vec.size]), state)[0] * c))

    eps = 1e-6
    for _ in range(3):
        v = rng.standard_normal(grad.size)
        fd = (loss(eps * v) - loss(-eps * v)) / (2 * eps)
        assert abs(float(grad @ v) - fd) <= 1e-6 * max(1.0, abs(fd))


def test_deq_checks_its_first_call_and_names_z_and_x():
    deq = dq.DeepEquilibriumNetwork(_deq_f(4), dq.Anderson())
    params, state = nn.setup(np.random.default_rng(0), deq)
    with pytest.raises(ValueError, match="z of shape"):
        deq(np.ones((2, 3)), params, state)


def test_deq_jvp_through_linearised_f_equals_unlinearised():
    deq = dq.DeepEquilibriumNetwork(_deq_f(4, weight_norm=True), dq.Anderson(), atol=1e-10, rtol=1e-10,
                                    max_steps=100)
    rng = np.random.default_rng(2)
    params, state = nn.setup(rng, deq)
    params["model"]["layer_1"]["layer_1"]["weight_g"] *= 0.5
    x, dx = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    fast = deq.jvp(x, params, state, dx)[1]
    model = deq.model
    model.linearize = lambda x, p, s: (model(x, p, s)[0], lambda d: model.jvp(x, p, s, d)[1])
    assert np.array_equal(fast, deq.jvp(x, params, state, dx)[1])


def test_multiscale_deq_through_bound_f_equals_unbound():
    sizes = (3, 2)
    main = (nn.Parallel(nn.add, nn.Dense(3, 3, "tanh", use_bias=False, weight_norm=True), nn.Dense(3, 3)),
            nn.Dense(2, 2, "tanh"))
    mapping = [[nn.NoOpLayer() if i == k else nn.Dense(sizes[i], sizes[k], "tanh") for k in range(2)]
               for i in range(2)]
    build = lambda: dq.MultiScaleDeepEquilibriumNetwork(main, mapping, None, dq.Anderson(),  # noqa: E731
                                                        ((3,), (2,)), atol=1e-9, rtol=1e-9, max_steps=80)
    bound, unbound = build(), _unbound(build())
    rng = np.random.default_rng(4)
    params, state = nn.setup(rng, bound)
    params["model"]["main_1"]["layer_1"]["weight_g"] *= 0.3
    x = rng.standard_normal((4, 3))
    outs = []
    for deq in (bound, unbound):
        ys, pullback, new_state = nn.vjp(deq, x, params, state)
        dx, dparams = pullback(tuple(np.ones_like(y) for y in ys))
        outs.append((ys, new_state["solution"].nfev, dx, nn.ravel(dparams)[0]))
    (ys_b, nfe_b, dx_b, dp_b), (ys_u, nfe_u, dx_u, dp_u) = outs
    assert nfe_b == nfe_u
    assert all(np.array_equal(a, b) for a, b in zip(ys_b, ys_u))
    assert np.linalg.norm(dp_b - dp_u) <= 1e-12 * np.linalg.norm(dp_u) and np.array_equal(dx_b, dx_u)


def _tree_same(a, b):
    if isinstance(a, dict):
        return isinstance(b, dict) and sorted(a) == sorted(b) and all(_tree_same(a[k], b[k]) for k in a)
    if not hasattr(a, "shape"):                     # (a flag in a layer's state)
        return a == b
    return _same(a, b)


def _multiscale_map():
    main = (nn.Parallel(nn.add, nn.Dense(3, 3, "tanh", use_bias=False, weight_norm=True), nn.Dense(3, 3)),
            nn.Dense(2, 2, "tanh", spectral_norm=True))
    mapping = [[nn.NoOpLayer() if i == k else nn.Dense((3, 2)[i], (3, 2)[k], "tanh") for k in range(2)]
               for i in range(2)]
    return dq.MultiScaleDeepEquilibriumNetwork(main, mapping, None, dq.Anderson(), ((3,), (2,))).model


@pytest.mark.parametrize("case", range(len(_layers(2)) + 2),
                         ids=lambda i: ([c[0] for c in _layers(2)] + ["conv2d", "multiscale map"])[i])
def test_bound_vjp_equals_the_unbound_vjp(case):
    """``bind_vjp``'s calls (several per binding) and their pullbacks (full, input-only, partial) equal ``vjp``'s."""
    width = 5
    rng = np.random.default_rng(case)
    cases = _layers(width)
    if case < len(cases):
        _, layer, make = cases[case]
    elif case == len(cases):
        layer = nn.Chain(nn.Conv2d(2, 3, 3, padding=1, activation="tanh", weight_norm=True), nn.Conv2d(3, 2, 3, padding=1))
        make = lambda rng, b: rng.standard_normal((b, 2, 4, 4))                 # noqa: E731
    else:
        layer = _multiscale_map()
        make = lambda rng, b: (rng.standard_normal((b, 5)), rng.standard_normal((b, 3)))    # noqa: E731
    params, state = nn.setup(rng, layer)
    bound = layer.bind_vjp(params, state)
    for batch in (1, 7, 7):
        x = make(rng, batch)
        y, pullback, new_state = layer.vjp(x, params, state)
        y_b, pullback_b, new_state_b = bound(x)
        assert _same(y_b, y) and _tree_same(new_state_b, new_state)
        dy = tuple(rng.standard_normal(a.shape) for a in y) if isinstance(y, tuple) else rng.standard_normal(y.shape)
        (dx, dparams), (dx_b, dparams_b) = pullback(dy), pullback_b(dy)
        assert _same(dx_b, dx) and _tree_same(dparams_b, dparams)
        assert _same(input_pullback(pullback_b)(dy), input_pullback(pullback)(dy))
        if isinstance(x, tuple) and case < len(cases):
            for wanted in ((True, False), (False, True)):
                assert _same(input_pullback(pullback_b, wanted)(dy), input_pullback(pullback, wanted)(dy))
                got, want = partial_pullback(pullback_b, wanted)(dy), partial_pullback(pullback, wanted)(dy)
                assert _same(got[0], want[0]) and _tree_same(got[1], want[1])


def _count_weight_norms(monkeypatch):
    from deqcore.nn import reparam

    calls = []
    original = reparam.WeightNorm.weight_vjp
    monkeypatch.setattr(reparam.WeightNorm, "weight_vjp",
                        lambda self, params, state: calls.append(1) or original(self, params, state))
    return calls


@pytest.mark.parametrize("mode", ["phantom", "fixed depth", "jacobian loss"])
def test_deq_binds_its_vjp_once_per_chain_of_calls(mode, monkeypatch):
    """Phantom gradients, the fixed-depth chain and the Jacobian loss's gradient run the model's VJP
    bound to its parameters (one weight normalisation per chain, shared with the VJP at z*): the same values and
    gradients as through the unbound VJP, bit for bit."""
    width, steps = 4, 6
    settings_ = dict(atol=1e-9, rtol=1e-9, max_steps=60)
    if mode == "phantom":
        settings_["adjoint"] = dq.PhantomGradient(steps=steps)
    elif mode == "jacobian loss":
        settings_.update(jacobian_regularization="reverse", jacobian_loss_weight=0.5)
    build = lambda: dq.DeepEquilibriumNetwork(_deq_f(width, weight_norm=True), dq.Anderson(), **settings_)  # noqa
    rng = np.random.default_rng(7)
    bound, unbound = build(), build()
    model = unbound.model
    model.bind_vjp = lambda params, state: (lambda x: model.vjp(x, params, state))
    params, state = nn.setup(rng, bound)
    params["model"]["layer_1"]["layer_1"]["weight_g"] *= 0.4
    if mode == "fixed depth":
        state = dq.models.with_fixed_depth(state, steps)
    x, dy = rng.standard_normal((3, width)), rng.standard_normal((3, width))
    outs = []
    for deq in (unbound, bound):
        calls = _count_weight_norms(monkeypatch)
        z, pullback, _ = nn.vjp(deq, x, params, state)
        dx, dparams = pullback(dy)
        outs.append((z, dx, nn.ravel(dparams)[0], len(calls)))
        monkeypatch.undo()
    (z_u, dx_u, dp_u, calls_u), (z_b, dx_b, dp_b, calls_b) = outs
    assert np.array_equal(z_b, z_u) and np.array_equal(dx_b, dx_u) and np.array_equal(dp_b, dp_u)
    assert (calls_u, calls_b) == {"phantom": (1 + steps, 1), "fixed depth": (steps, 1), "jacobian loss": (3, 1)}[mode]


@pytest.mark.parametrize("variant", ["zeros", "one_step"])
def test_deq_forward_normalises_its_weight_once(variant, monkeypatch):
    """A DEQ's forward binds f (the weight) for its solve and its VJP at z* (the weight and its pullback)
    inside one ``shared_weights`` block: one weight normalisation a training step instead of two (three with
    the Skip-Reg start's VJP), with values, counts and gradients bit for bit those computed without the
    block."""
    from contextlib import nullcontext

    from deqcore.models import deq as deq_module
    from deqcore.nn import reparam

    width = 5
    deq = dq.DeepEquilibriumNetwork(_deq_f(width, weight_norm=True), dq.Anderson(), init=variant, atol=1e-9,
                                    rtol=1e-9, max_steps=60)
    rng = np.random.default_rng(11)
    params, state = nn.setup(rng, deq)
    params["model"]["layer_1"]["layer_1"]["weight_g"] *= 0.4
    x, dy = rng.standard_normal((4, width)), rng.standard_normal((4, width))
    outs = []
    for shared in (True, False):
        if not shared:
            monkeypatch.setattr(deq_module, "shared_weights", nullcontext)
        calls = []
        original = reparam.WeightNorm._parts
        counting = staticmethod(lambda p: calls.append(1) or original(p))
        monkeypatch.setattr(reparam.WeightNorm, "_parts", counting)
        z, pullback, new_state = nn.vjp(deq, x, params, state)
        dx, dparams = pullback(dy)
        solution = new_state["solution"]
        outs.append((z, dx, nn.ravel(dparams)[0], solution.nfev, solution.adjoint.nvjp, len(calls)))
        monkeypatch.undo()
    (z_s, dx_s, dp_s, nfe_s, nvjp_s, calls_s), (z_u, dx_u, dp_u, nfe_u, nvjp_u, calls_u) = outs
    assert np.array_equal(z_s, z_u) and np.array_equal(dx_s, dx_u) and np.array_equal(dp_s, dp_u)
    assert (nfe_s, nvjp_s) == (nfe_u, nvjp_u)
    assert (calls_s, calls_u) == ((1, 2) if variant == "zeros" else (1, 3))
    assert reparam._SHARED.memo is None                 # (nothing kept after the forward)


def test_deq_checks_a_call_signature_once_and_then_runs_bound(monkeypatch):
    """A DEQ's first f-evaluation goes through the layers' checked calls once per signature (array types, shapes
    and dtypes of z, x, the parameters and the state); later solves of that signature start bound, with the
    same values and gradients bit for bit as a DEQ that checks every call; a new signature is checked again, and
    a wrong input still fails with the error naming z and x."""
    from deqcore.models import deq as deq_module

    width = 4
    build = lambda: dq.DeepEquilibriumNetwork(_deq_f(width, weight_norm=True), dq.Anderson(), atol=1e-9,  # noqa
                                              rtol=1e-9, max_steps=60)
    cached, fresh = build(), None
    rng = np.random.default_rng(5)
    params, state = nn.setup(rng, cached)
    params["model"]["layer_1"]["layer_1"]["weight_g"] *= 0.4
    checked = []
    original = deq_module.DeepEquilibriumNetwork._checked_f

    def counting(self, params, state):
        f = original(self, params, state)
        return lambda z, x: checked.append(self) or f(z, x)

    monkeypatch.setattr(deq_module.DeepEquilibriumNetwork, "_checked_f", counting)
    for batch in (3, 3, 5, 3, 5):
        x, dy = rng.standard_normal((batch, width)), rng.standard_normal((batch, width))
        fresh = build()                                  # (a new model: no signature seen, checked first)
        outs = []
        for deq in (cached, fresh):
            z, pullback, new_state = nn.vjp(deq, x, params, state)
            dx, dparams = pullback(dy)
            outs.append((z, dx, nn.ravel(dparams)[0], new_state["solution"].nfev))
        (z_c, dx_c, dp_c, n_c), (z_f, dx_f, dp_f, n_f) = outs
        assert np.array_equal(z_c, z_f) and np.array_equal(dx_c, dx_f) and np.array_equal(dp_c, dp_f)
        assert n_c == n_f
    assert sum(d is cached for d in checked) == 2        # batches 3 and 5, each once
    assert sum(d is not cached for d in checked) == 5    # every fresh model
    with pytest.raises(ValueError, match="z of shape"):
        cached(np.ones((3, width - 1)), params, state)
    x32 = rng.standard_normal((3, width)).astype(np.float32)
    with pytest.raises(TypeError):
        cached(x32, params, state)


def test_call_signature_tells_apart_what_the_checks_read():
    from deqcore.models.deq import _call_signature

    z, x = np.zeros((2, 3)), np.ones((2, 3))
    params, state = {"w": np.ones((3, 3))}, {"training": True}
    key = _call_signature(z, x, params, state)
    assert key == _call_signature(z + 1, x * 2, {"w": np.zeros((3, 3))}, {"training": True})   # values alone
    for other in [(np.zeros((2, 4)), x, params, state), (z.astype(np.float32), x, params, state),
                  (z, x[:1], params, state), (z, x, {"w": np.ones((3, 2))}, state),
                  (z, x, {"v": np.ones((3, 3))}, state), (z, x, params, {"training": False}),
                  (z, x, params, {"training": 1}), (z, x, {"w": [np.ones((3, 3))]}, state)]:
        assert _call_signature(*other) != key
    assert _call_signature(z, x, {"w": object()}, state) is None          # (no signature: always checked)


def test_deq_runs_the_root_api_checks_once_per_call_signature(monkeypatch):
    """A DEQ's solve goes through the root API's argument checks once per signature and settings; later solves
    of that signature skip them with the same values, counts and gradients, bit for bit, as a model that runs
    them every time; new settings or shapes are checked again."""
    from deqcore.root import api

    width = 4
    build = lambda: dq.DeepEquilibriumNetwork(_deq_f(width, weight_norm=True), dq.Anderson(), atol=1e-9,  # noqa
                                              rtol=1e-9, max_steps=60)
    cached = build()
    rng = np.random.default_rng(11)
    params, state = nn.setup(rng, cached)
    params["model"]["layer_1"]["layer_1"]["weight_g"] *= 0.4
    checks = []
    original = api._check_common
    monkeypatch.setattr(api, "_check_common", lambda *a: checks.append(1) or original(*a))
    calls = [(3, 1e-9), (3, 1e-9), (3, 1e-6), (3, 1e-6), (2, 1e-6), (3, 1e-9)]
    for batch, atol in calls:
        cached.atol = atol
        fresh = build()
        fresh.atol = atol
        x, dy = rng.standard_normal((batch, width)), rng.standard_normal((batch, width))
        outs = []
        for deq in (cached, fresh):
            z, pullback, new_state = nn.vjp(deq, x, params, state)
            dx, dparams = pullback(dy)
            sol = new_state["solution"]
            outs.append((z, dx, nn.ravel(dparams)[0], sol.nfev, sol.adjoint.nvjp, sol.result))
        for a, b in zip(*outs):
            assert np.array_equal(a, b)
    assert len(checks) == 3 + len(calls)             # cached: (3, 1e-9), (3, 1e-6), (2, 1e-6); fresh: each call


def test_deq_checks_its_input_once_per_signature(monkeypatch):
    """A DEQ started from zeros checks x against its parameters once per call signature (x's type, shape and
    dtype, the parameters' and state's layout); a later call of another signature is checked again, so a
    float32 x for float64 parameters, an integer x or an x without a batch axis still raise, naming x."""
    from deqcore.models import deq as deq_module

    width = 4
    deq = dq.DeepEquilibriumNetwork(_deq_f(width), dq.Anderson())
    rng = np.random.default_rng(3)
    params, state = nn.setup(rng, deq)
    checks = []
    original = deq_module.DeepEquilibriumNetwork._check_input
    monkeypatch.setattr(deq_module.DeepEquilibriumNetwork, "_check_input",
                        lambda self, x, p: checks.append(x.shape) or original(self, x, p))
    for batch in (3, 3, 2, 3, 2):
        z, _ = deq(rng.standard_normal((batch, width)), params, state)
        assert z.shape == (batch, width)
    assert checks == [(3, width), (2, width)]
    for bad, error in [(np.ones((3, width), np.float32), "x has dtype float32 but the parameters are"),
                       (np.ones((3, width), np.int64), "x has dtype int64"),
                       (np.ones(()), "x must have a leading batch axis")]:
        with pytest.raises((TypeError, ValueError), match=error):
            deq(bad, params, state)
