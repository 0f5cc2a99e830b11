"""Deep Equilibrium Networks (Bai et al. 2019) and skip DEQs (Pal et al. 2022) as deqcore layers.

The model f is called on ``(z, x)``; the output is z* with z* = f((z*, x)), found by a root finder (any
deqcore fixed-point or root solver) or by integrating dz/dt = f((z, x)) − z to steady state (any deqcore
ODE solver). Gradients come from an implicit adjoint, never from backpropagating through the iterations.

>>> import numpy as np, deqcore as dq
>>> from deqcore import nn
>>> model = dq.DeepEquilibriumNetwork(
...     nn.Parallel(nn.add, nn.Dense(2, 2, use_bias=False), nn.Dense(2, 2, use_bias=False)), dq.VCABM3())
>>> params, state = nn.setup(np.random.default_rng(0), model)
>>> params["model"]["layer_1"]["weight"] *= 0.5             # z ↦ W z + U x has a steady state when W is stable
>>> y, state = model(np.ones((1, 2)), params, state)
>>> y.shape, state["solution"].success
((1, 2), array([ True]))
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np

from .._checks import check_bool, check_choice, check_positive_int, check_tolerance
from ..adjoint import GaussAdjoint
from ..adjoint import _warn
from ..adjoint._warn import warn_failed
from ..adjoint.steady_state import (
    FixedPointVJP, OneStepGradient, PhantomGradient, SteadyStateAdjoint, preconditioner_from_forward,
)
from ..backend import get_namespace
from ..linalg import GMRES, LinearOperator
from ..nn.core import Layer, input_pullback, partial_pullback
from ..nn.reparam import shared_weights
from ..nn.tree import tree_add, tree_leaves, tree_map
from ..results import ReturnCode
from .jacobian import JACOBIAN_MODES, hutchinson_probe, jacobian_loss_gradient
from .solution import DeepEquilibriumSolution
from .solvers import check_solver, integrate_span, is_ode_solver, ode_parameter_gradient, solve_equilibrium

__all__ = ["DeepEquilibriumNetwork", "SkipDeepEquilibriumNetwork", "INIT_CHOICES", "with_fixed_depth"]

#: Python spellings of the reference's ``init``: "zeros" (its ``missing``), "one_step" (its ``nothing``:
#: Skip-Reg, u0 = f((0, x))), or a layer (u0 = init(x), trained through the skip loss).
INIT_CHOICES = ("zeros", "one_step")
_ADJOINTS = (SteadyStateAdjoint, OneStepGradient, PhantomGradient)


def with_fixed_depth(state, depth: int):
    """A copy of a DEQ's state that runs ``depth`` chained applications of f instead of solving (0: solve).

    The unrolled mode is for pretraining; its gradient is exact backpropagation through the chain.

    >>> with_fixed_depth({"fixed_depth": 0, "model": {}}, 3)["fixed_depth"]
    3
    """
    depth = check_positive_int(depth, "depth", minimum=0)
    return {**state, "fixed_depth": depth}


class DeepEquilibriumNetwork(Layer):
    """A layer whose output is the fixed point z* = f((z*, x)) of ``model``.

    Args:
        model: an ``nn.Layer`` called on the tuple ``(z, x)``, returning an array shaped like z.
        solver: a root/fixed-point solver (``dq.Anderson()``, ``dq.Broyden()``, ``dq.NewtonRaphson()``, ...)
            or an ODE solver (``dq.VCABM3()``, ``dq.Tsit5()``, ...: dz/dt = f((z, x)) − z to steady state).
        init: "zeros" (default; z starts at zeros shaped like x), "one_step" (Skip-Reg: u0 = f((0, x))),
            or an ``nn.Layer`` computing u0 = init(x) (a skip DEQ).
        jacobian_regularization: None, "forward", "finite_diff" or "reverse" (see ``models.jacobian``).
        problem_type: "steady_state" (a DEQ) or "ode" (a vanilla neural ODE over ``tspan``).
        adjoint: ``dq.SteadyStateAdjoint(...)`` (default: LU up to 50 state elements per sample, else GMRES on
            VJPs solved to this model's tolerance within ``max_steps`` VJPs; ``dq.SteadyStateAdjoint(
            accuracy="cheap")`` is the reference's cheaper, inexact setting), ``dq.OneStepGradient()`` or
            ``dq.PhantomGradient(...)``; for problem_type="ode", an ODE adjoint (default ``dq.GaussAdjoint()``).
        atol, rtol, max_steps: the forward solve's tolerances (the reference's abstol/reltol/maxiters;
            defaults 1e-3, 1e-3, 32: cheap solves are normal in DEQ training).
        tspan: the time span of problem_type="ode".
        jacobian_loss_weight, skip_loss_weight: weights with which the pullback adds the gradients of
            ``solution.jacobian_loss`` and ``solution.skip_loss`` (default 0: add them yourself by passing
            ``d_jacobian_loss=`` / ``d_skip_loss=`` to the pullback). Set them when the DEQ sits inside an
            ``nn.Chain``, whose pullback passes only ``dy``; add ``weight * loss`` to the reported loss.
        compact: True declares ``model``'s rows independent (sample i's output depends on sample i's z and x
            alone): x then goes to the solver as a per-sample argument and finished samples stop costing
            f-evaluations (active-set compaction; the forward solve only, with solvers that support it:
            Anderson, Broyden, LimitedMemoryBroyden, FixedPointIteration). The results are those of the
            uncompacted solve up to round-off (f on fewer rows may round differently, which can also change the
            outcome of a sample whose iteration is chaotic, e.g. one that stalls). A layer that couples the
            samples in its current state (``nn.BatchNorm`` or ``nn.Dropout`` in training mode, see
            ``nn.Layer.row_coupling``) makes a call solve uncompacted with a ``RuntimeWarning`` naming it (once per
            call site); ODE solvers are refused (ValueError). Your own layers must not mix samples (or must say so
            through ``row_coupling``). ``state["solution"].original.stats["row_evaluations"]`` counts the rows
            evaluated. Default False.

    A sample whose forward solve fails keeps its code in ``state["solution"].result`` and the best iterate
    (a ``RuntimeWarning`` names the code and the count, once per call site); its gradient is then not the implicit
    gradient. A sample whose input (or initial guess) holds NaN or infinity is marked DIVERGED; the others are
    unaffected.

    State: ``state["solution"]`` holds a :class:`DeepEquilibriumSolution` after each call;
    ``state["fixed_depth"]`` > 0 switches to the unrolled pretraining mode (see :func:`with_fixed_depth`).

    The pullback of :func:`nn.vjp` takes optional keyword cotangents for the auxiliary losses:
    ``pullback(dy, d_jacobian_loss=None, d_skip_loss=None)`` (None: the layer's weights).

    >>> import numpy as np, deqcore as dq
    >>> from deqcore import nn
    >>> f = nn.Chain(nn.Parallel(nn.add, nn.Dense(3, 3, use_bias=False), nn.Dense(3, 3)), nn.Activation("tanh"))
    >>> deq = dq.DeepEquilibriumNetwork(f, dq.Anderson(), atol=1e-10, rtol=0.0, max_steps=100)
    >>> params, state = nn.setup(np.random.default_rng(0), deq)
    >>> params["model"]["layer_1"]["layer_1"]["weight"] *= 0.3          # keep f contractive
    >>> x = np.ones((2, 3))
    >>> z, pullback, state = nn.vjp(deq, x, params, state)
    >>> bool(np.abs(f((z, x), params["model"], state["model"])[0] - z).max() < 1e-9)     # z = f((z, x))
    True
    >>> dx, dparams = pullback(np.ones_like(z))                         # implicit adjoint
    >>> dx.shape, sorted(dparams)
    ((2, 3), ['model'])
    """

    def __init__(self, model, solver, *, init="zeros", jacobian_regularization=None,
                 problem_type="steady_state", adjoint=None, atol=1e-3, rtol=1e-3, max_steps=32,
                 tspan=(0.0, 1.0), jacobian_loss_weight=0.0, skip_loss_weight=0.0, compact=False):
        if not isinstance(model, Layer):
            raise TypeError(f"model must be a deqcore.nn.Layer, got {type(model).__name__}")
        if not isinstance(init, Layer):
            check_choice(init, "init", INIT_CHOICES)
        check_choice(jacobian_regularization, "jacobian_regularization", JACOBIAN_MODES)
        check_choice(problem_type, "problem_type", ("steady_state", "ode"))
        self.model = model
        self.solver = solver
        self.init_layer = init if isinstance(init, Layer) else None
        self.init_mode = "layer" if isinstance(init, Layer) else init
        self.jacobian_regularization = jacobian_regularization
        self.problem_type = problem_type
        self.atol = check_tolerance(atol, "atol")
        self.rtol = check_tolerance(rtol, "rtol")
        self.max_steps = check_positive_int(max_steps, "max_steps")
        self.jacobian_loss_weight = check_tolerance(jacobian_loss_weight, "jacobian_loss_weight")
        self.skip_loss_weight = check_tolerance(skip_loss_weight, "skip_loss_weight")
        self.compact = check_bool(compact, "compact")
        if self.compact and is_ode_solver(solver):
            raise ValueError(f"compact=True drops finished samples from a root solver's evaluations; the ODE solver "
                             f"{type(solver).__name__} evaluates every sample: pass compact=False or a root solver "
                             "such as dq.Anderson()")
        if problem_type == "ode":
            if not is_ode_solver(solver):
                raise TypeError("problem_type='ode' needs an ODE solver such as dq.Tsit5() or dq.VCABM3(); got "
                                f"{type(solver).__name__}")
            self.tspan = _check_tspan(tspan)
            self.adjoint = _default_ode_adjoint() if adjoint is None else adjoint
        else:
            check_solver(solver)
            self.tspan = None
            if adjoint is None:
                adjoint = SteadyStateAdjoint()
            if not isinstance(adjoint, _ADJOINTS):
                raise TypeError("adjoint must be dq.SteadyStateAdjoint(...), dq.OneStepGradient() or "
                                f"dq.PhantomGradient(...); got {type(adjoint).__name__}")
            if isinstance(adjoint, SteadyStateAdjoint):     # unset tolerances follow this model's forward solve
                adjoint = adjoint.with_forward(self.atol, self.rtol, self.max_steps)
            self.adjoint = adjoint

    def __repr__(self):
        return f"{type(self).__name__}({self.model!r}, {type(self.solver).__name__}(...))"

    # -- parameters ---------------------------------------------------------------------------------------
    def init(self, rng):
        """Parameters ``{"model": ..., "init": ...}`` and state (the model's, plus the solve's record)."""
        pm, sm = self.model.init(rng)
        params, state = {"model": pm}, {"model": sm, "fixed_depth": 0, "jacobian_seed": 0, "solution": None}
        if self.init_mode == "layer":
            params["init"], state["init"] = self.init_layer.init(rng)
        return params, state

    def row_coupling(self, state):
        """Why this DEQ's rows are not independent in ``state`` (a reason naming the layer), or None."""
        reason = self.model.row_coupling(state["model"])
        if reason is None and self.init_mode == "layer":
            reason = self.init_layer.row_coupling(state["init"])
        return reason

    def _zero_state(self, x):
        """u0 for init="zeros": zeros shaped like x (the reference's ``zero(x)``)."""
        return get_namespace(x).zeros_like(x)

    def output(self, z_star):
        """The layer's output from the fixed point (multiscale models split it per scale)."""
        return z_star

    def output_vjp(self, dy):
        """The cotangent of z* from the output's cotangent (inverse of :meth:`output`)."""
        return dy

    # -- forward ------------------------------------------------------------------------------------------
    def _f(self, x, params, state, signature=None):
        """z ↦ f((z, x)) at fixed x and parameters (shapes and dtypes checked, errors naming z and x, on the first
        call; the later calls run the model bound to its parameters, see ``nn.Layer.bind``). ``signature``: the
        first call's :func:`_call_signature`, when the caller has it."""
        f_rows = self._f_rows(params, state, signature)
        return lambda z: f_rows(z, x)

    def _f_rows(self, params, state, signature=None):
        """(z, x) ↦ f((z, x)) on any rows of a batch (the compacted solve passes x per sample): through the layers'
        checked calls the first time, bound to the parameters after it (see :meth:`_f`). A first call whose
        arguments have the signature of one already checked on this model (the same array types, shapes and
        dtypes of z, x, the parameters and the state: what the layers' checks read) runs bound at once: a training
        loop checks its layers on its first step, not at every step."""
        checked, bound = self._checked_f(params, state), None

        def f(z, x):
            nonlocal bound
            if bound is not None:
                return bound((z, x))
            key = _call_signature(z, x, params["model"], state["model"]) if signature is None else signature
            seen = self.__dict__.setdefault("_checked_signatures", set())
            if key is not None and key in seen:
                bound = self.model.bind(params["model"], state["model"])
                try:
                    out = bound((z, x))
                except Exception:               # (the checked call raises its error naming z and x)
                    out = None
                if type(out) is type(z) and out.shape == z.shape and out.dtype == z.dtype:
                    return out
                bound = None                    # (not what the checked call returns: check it again)
            out = checked(z, x)
            if key is not None:
                if len(seen) >= _SIGNATURES_KEPT:
                    seen.clear()
                seen.add(key)
            bound = self.model.bind(params["model"], state["model"])     # (bound once f is called again)
            return out

        return f

    def _checked_f(self, params, state):
        """(z, x) ↦ f((z, x)) through the layers' public calls, with errors naming z and x."""
        model, pm, sm = self.model, params["model"], state["model"]

        def f(z, x):
            try:
                out = model((z, x), pm, sm)[0]
            except (TypeError, ValueError) as error:
                raise type(error)(
                    f"{type(self).__name__}: the model failed on (z, x) with z of shape {tuple(z.shape)} (zeros shaped "
                    f"like x for init='zeros', else the initial guess's shape) and x of shape "
                    f"{tuple(getattr(x, 'shape', ()))}: {error}") from error
            if getattr(out, "shape", None) != z.shape or getattr(out, "dtype", None) != z.dtype:
                raise _model_mismatch(type(self).__name__, out, z, x)
            return out

        return f

    def _check_trees(self, params, state):
        """params and state must be this model's trees from ``nn.setup`` (a None state or an empty params was an
        AttributeError or a KeyError)."""
        keys = ("model", "init") if self.init_mode == "layer" else ("model",)
        for name, tree in (("params", params), ("state", state)):
            if not isinstance(tree, dict) or any(k not in tree for k in keys):
                got = f"a dict with keys {sorted(map(str, tree))}" if isinstance(tree, dict) else type(tree).__name__
                raise TypeError(f"{type(self).__name__}: {name} must be the {name} from nn.setup(rng, model) (a dict "
                                f"with {', '.join(map(repr, keys))}); got {got}")

    def _check_input(self, x, params):
        """x must be a floating array of the parameters' dtype (errors name x and the parameters)."""
        if not hasattr(x, "dtype") or not hasattr(x, "shape"):
            raise TypeError(f"x must be a NumPy or CuPy array, got {type(x).__name__}")
        if np.dtype(x.dtype).kind != "f":
            raise TypeError(f"x has dtype {x.dtype}; pass a float32 or float64 array (e.g. x.astype(np.float32))")
        if getattr(x, "ndim", 0) < (1 if self.init_mode == "layer" else 2):     # (z is shaped like x: (B, ...))
            raise ValueError(f"x must have a leading batch axis and each sample's own axes, shape (B, ...); got "
                             f"shape {tuple(x.shape)}")
        if x.size == 0:
            raise ValueError(f"x must have at least one sample and element, got shape {tuple(x.shape)}")
        kinds = {np.dtype(a.dtype) for a in tree_leaves(params) if np.dtype(a.dtype).kind == "f"}
        if kinds and np.dtype(x.dtype) not in kinds:
            want = sorted(str(k) for k in kinds)[0]
            raise TypeError(
                f"x has dtype {x.dtype} but the parameters are {'/'.join(sorted(str(k) for k in kinds))}: cast x "
                f"(x.astype(np.{want})) or the parameters (deqcore.tree_map(lambda a: a.astype(np.{x.dtype}), "
                "params)) so that they agree")

    def _initial(self, x, params, state, want_vjp):
        """(u0, pullback of u0 w.r.t. (x, params) or None, extra f-evaluations)."""
        if self.init_mode == "layer":
            if want_vjp:
                u0, pb, _ = self.init_layer.vjp(x, params["init"], state["init"])
                return u0, pb, 0
            return self.init_layer(x, params["init"], state["init"])[0], None, 0
        zeros = self._zero_state(x)
        if self.init_mode == "zeros":
            return zeros, None, 0
        if want_vjp:
            u0, pb, _ = self.model.vjp((zeros, x), params["model"], state["model"])
            return u0, lambda du: _model_cotangent(pb(du)), 1
        return self._f(x, params, state)(zeros), None, 1

    def _solve(self, x, params, state, u0, signature=None, held=None):
        if self.problem_type == "ode":
            return integrate_span(_hold_rows(self._f(x, params, state), held), u0, self.solver, self.tspan,
                                  atol=self.atol, rtol=self.rtol, max_steps=self.max_steps)
        if self._compacts(x, state, u0):
            return solve_equilibrium(self._f_rows(params, state), u0, self.solver, atol=self.atol, rtol=self.rtol,
                                     max_steps=self.max_steps, args=(x,), compact=True)
        if signature is None and type(u0) is np.ndarray:     # (given: x's, u0 being zeros like x)
            signature = _call_signature(u0, x, params["model"], state["model"])
        f = self._f(x, params, state, signature)
        key, solved = None, self.__dict__.setdefault("_solved_signatures", set())
        if signature is not None and not is_ode_solver(self.solver):
            key = (signature, self.solver, self.atol, self.rtol, self.max_steps)
            try:
                seen = key in solved
            except TypeError:                           # (an unhashable solver: checked every time)
                key, seen = None, False
            if seen:
                # the root API's argument checks passed on this call before: what they read is u0's signature,
                # these settings and u0's finiteness (zeros, or non-finite rows replaced by zeros, see
                # _solve_isolated), so a training loop runs them on its first step only
                return _fixed_point_checked_before(f, u0, self.solver, self.atol, self.rtol, self.max_steps)
        outcome = solve_equilibrium(f, u0, self.solver, atol=self.atol, rtol=self.rtol, max_steps=self.max_steps)
        if key is not None:
            if len(solved) >= _SIGNATURES_KEPT:
                solved.clear()
            solved.add(key)
        return outcome

    def _compacts(self, x, state, u0):
        """True when this call's solve may drop finished samples: ``compact=True`` and no layer of the model
        couples the samples in ``state`` (else a warning names the layer and the solve evaluates every row)."""
        if not self.compact:
            return False
        if x.shape[0] != u0.shape[0]:
            raise ValueError(f"compact=True passes x to the solver per sample: x must hold the batch of the initial "
                             f"state ({u0.shape[0]}) on its leading axis; got shape {tuple(x.shape)}")
        reason = self.model.row_coupling(state["model"])
        if reason is not None:
            _warn_once(f"{type(self).__name__}(compact=True) solves every sample to the end in this call: {reason} "
                       "couples the samples (use nn.testmode(state) for inference, or a per-sample normalisation "
                       "such as nn.GroupNorm)")
            return False
        return True

    def _zeros_start_signature(self, x, params, state):
        """:func:`_call_signature` of f((u0, x)) for a solve from zeros shaped like x (u0's signature is x's),
        computed before the input checks: a signature already in ``_inputs_checked`` passed
        :meth:`_check_input` (which reads x's type, shape and dtype and the parameters' dtypes; ``params``
        holds the model's alone here), so a training loop runs those checks on its first step only. None when
        the start is not zeros shaped like x (or the trees hold unsigned leaves)."""
        if (self.init_mode != "zeros" or type(x) is not np.ndarray or self.problem_type != "steady_state"
                or type(self)._zero_state is not DeepEquilibriumNetwork._zero_state
                or not isinstance(params, dict) or len(params) != 1 or not isinstance(state, dict)):
            return None
        try:
            return _call_signature(x, x, params["model"], state["model"])
        except (KeyError, TypeError):
            return None

    def _solve_isolated(self, x, params, state, u0, signature=None, held=None):
        """The forward solve; a sample whose start u0 holds NaN/inf (a NaN input through a learned or
        one-step initial guess) starts from zeros instead and is marked DIVERGED, so it cannot stop the batch.
        Warns once per call site when samples fail. ODE models (one integration for the batch): the samples
        ``held`` (non-finite inputs, zeroed by :func:`_zero_nonfinite_samples`) stay at their start, marked DIVERGED; the
        others' codes are the integration's."""
        xp = get_namespace(u0)
        if self.problem_type == "ode":
            outcome = self._solve(x, params, state, u0, held=held)
            codes = xp.full((u0.shape[0],), int(outcome.result), dtype=np.int64)
            if held is not None:
                codes = xp.where(held, int(ReturnCode.DIVERGED), codes)
            warn_failed(f"the forward solve of {type(self).__name__}", codes,
                        "The state at the end of the span is returned and its gradient is not exact: raise "
                        "max_steps, or check the inputs of the samples marked DIVERGED for NaN/inf")
            return outcome, codes
        bad = None
        # (zeros, the start for init="zeros", are finite whatever x holds: no pass over them)
        if self.init_mode != "zeros" and u0.ndim >= 1 and u0.shape[0] > 0:
            u0, bad = _zero_nonfinite_samples(u0)
        outcome = self._solve(x, params, state, u0, signature)
        if bad is not None:
            outcome.result = xp.where(bad, int(ReturnCode.DIVERGED), outcome.result)
        warn_failed(f"the forward solve of {type(self).__name__}", outcome.result,
                    "The best iterate is returned and its gradient is not the implicit gradient: raise max_steps, "
                    "loosen atol/rtol or keep f contractive")
        return outcome, outcome.result

    def __call__(self, x, params, state):
        y, _, new_state = self._forward(x, params, state, want_vjp=False)
        return y, new_state

    def vjp(self, x, params, state):
        return self._forward(x, params, state, want_vjp=True)

    def _forward(self, x, params, state, want_vjp):
        # (the f bound for the solve and the VJP at z* normalise the same weights: once, see
        # nn.reparam.shared_weights)
        with shared_weights():
            return self._forward_shared(x, params, state, want_vjp)

    def _forward_shared(self, x, params, state, want_vjp):
        self._check_trees(params, state)
        signature = self._zeros_start_signature(x, params, state)
        checked = self.__dict__.setdefault("_inputs_checked", set())
        if signature is None or signature not in checked:
            self._check_input(x, params)
            if signature is not None:
                if len(checked) >= _SIGNATURES_KEPT:
                    checked.clear()
                checked.add(signature)
        held = None
        if self.problem_type == "ode":
            x, held = _zero_nonfinite_samples(x)
        # (checked, not int(): that took 1.5 as 1 and -2 as a solve)
        depth = check_positive_int(state.get("fixed_depth", 0), 'state["fixed_depth"]', minimum=0)
        u0, u0_pullback, extra_nfe = self._initial(x, params, state, want_vjp or depth > 0)
        if depth > 0:
            return self._unrolled(x, params, state, u0, u0_pullback, depth, extra_nfe)
        outcome, codes = self._solve_isolated(x, params, state, u0, signature, held)
        z_star = outcome.value
        xp = np if type(z_star) is np.ndarray else get_namespace(z_star)
        model, pm, sm = self.model, params["model"], state["model"]
        jac_seed = int(state.get("jacobian_seed", 0))
        fixed_pullback, f_star = None, None
        model_state = sm
        bound_vjp = None
        if want_vjp or self.jacobian_regularization is not None:
            # (bound: the weight normalisation and its pullback's set-up once for this VJP and the adjoint's others)
            bound_vjp = model.bind_vjp(pm, sm)
            f_star, fixed_pullback, model_state = bound_vjp((z_star, x))
            extra_nfe += 1
        jac_loss, jac_probe = 0.0, None
        if self.jacobian_regularization is not None:
            eps = xp.asarray(np.random.default_rng(jac_seed).standard_normal(z_star.shape), dtype=z_star.dtype)
            zeros_x = tree_map(lambda a: a * 0, x)
            jac_loss, direction, cotangent = hutchinson_probe(
                self.jacobian_regularization, z_star, eps, f_star, self._f(x, params, state),
                jvp_z=lambda v: model.jvp((z_star, x), pm, sm, (v, zeros_x))[1],
                vjp_z=lambda v: fixed_pullback(v)[0][0])
            jac_probe = (direction, cotangent)
            extra_nfe += self.jacobian_regularization == "finite_diff"
        skip_loss = ((z_star - u0) ** 2).mean() if self.init_mode != "zeros" else 0.0
        solution = DeepEquilibriumSolution(
            z_star=z_star, u0=u0, residual=outcome.residual, jacobian_loss=jac_loss,
            nfev=int(outcome.stats.get("nfev", 0)) + extra_nfe, result=codes, original=outcome,
            skip_loss=skip_loss, held=held)
        new_state = {**state, "model": model_state, "solution": solution, "fixed_depth": depth,
                     "jacobian_seed": jac_seed + (self.jacobian_regularization is not None)}
        y = self.output(z_star)
        if not want_vjp:
            return y, None, new_state
        pullback = self._implicit_pullback(x, params, state, solution, fixed_pullback, u0_pullback, jac_probe,
                                           bound_vjp)
        return y, pullback, new_state

    def _theta_vjp(self, x, params, state, bound=None):
        """vjp(z) -> (f(z), pullback(v) -> (dz, (dx, dparams_model))) at fixed x and params: the model's VJP bound
        to its parameters on the first call (``nn.Layer.bind_vjp``: a weight normalisation once per chain of
        calls, not once per call), or ``bound`` (the model's ``bind_vjp`` at these parameters)."""
        model, pm, sm = self.model, params["model"], state["model"]

        def vjp(z):
            nonlocal bound
            if bound is None:
                bound = model.bind_vjp(pm, sm)
            fz, pb, _ = bound((z, x))
            return fz, lambda v: _split_model_cotangent(pb(v))

        return vjp

    def _implicit_pullback(self, x, params, state, solution, fixed_pullback, u0_pullback, jac_probe, bound_vjp=None):
        vjp = self._theta_vjp(x, params, state, bound_vjp)
        z_only = input_pullback(fixed_pullback, (True, False))
        theta_only = partial_pullback(fixed_pullback, (False, True))     # the last VJP: x's and θ's cotangents
        problem = FixedPointVJP(solution.z_star, vjp, batched=True,
                                pullback=lambda v: _split_model_cotangent(fixed_pullback(v)),
                                pullback_z=lambda v: z_only(v)[0])

        def pullback(dy, *, d_jacobian_loss=None, d_skip_loss=None):
            d_jacobian_loss = (self.jacobian_loss_weight if d_jacobian_loss is None
                               else _check_loss_cotangent(d_jacobian_loss, "d_jacobian_loss"))
            d_skip_loss = self.skip_loss_weight if d_skip_loss is None else _check_loss_cotangent(d_skip_loss,
                                                                                                  "d_skip_loss")
            g = self.output_vjp(dy)
            if self.problem_type == "ode":
                (dx, dpm), info = self._ode_gradient(x, params, state, solution, g)
            else:
                (dx, dpm), info = self._adjoint_gradient(problem, g, solution,
                                                         lambda lam: _model_cotangent(theta_only(lam)))
            solution.adjoint = info
            if d_jacobian_loss and jac_probe is not None:
                direction, cotangent = jac_probe
                ddx, ddp = jacobian_loss_gradient(lambda z: (lambda v: vjp(z)[1](v)[1]), solution.z_star,
                                                  direction, cotangent, d_jacobian_loss)
                dx, dpm = dx + ddx, tree_add(dpm, ddp)
            du0 = None
            if d_skip_loss:
                du0 = -2.0 * d_skip_loss * (solution.z_star - solution.u0) / solution.z_star.size
            return self._add_initial_guess_cotangent(dx, dpm, params, u0_pullback, du0)

        return pullback

    def _add_initial_guess_cotangent(self, dx, dparams_model, params, u0_pullback, du0):
        """``(dx, dparams)`` after pulling ``du0`` (the cotangent of u0, or None) back through the initial
        guess: into the init layer's parameters, or into f's for the Skip-Reg start u0 = f((0, x))."""
        dparams = {"model": dparams_model}
        if self.init_mode == "layer":
            dparams["init"] = tree_map(lambda a: a * 0, params["init"])
        if du0 is not None and u0_pullback is not None:
            dx_init, dparams_init = u0_pullback(du0)
            dx = tree_add(dx, dx_init)
            key = "init" if self.init_mode == "layer" else "model"
            dparams[key] = tree_add(dparams[key], dparams_init)
        return dx, dparams

    def _adjoint_gradient(self, problem, g, solution, theta_pullback):
        """The implicit adjoint, preconditioned by what the forward solve learnt when it can be; its last VJP,
        ``theta_pullback(λ) -> (dx, dparams)``, skips the cotangent of z (the same arrays as the full pullback's
        x and θ parts, without its matmuls into z)."""
        if isinstance(self.adjoint, SteadyStateAdjoint):
            learned = getattr(solution.original, "learned", None) or {}
            info = self.adjoint.solve_adjoint(problem, g, preconditioner=preconditioner_from_forward(learned))
            info.stats["nvjp"] += 1
            return theta_pullback(info.lam), info
        return self.adjoint.gradient(problem, g)

    def _ode_gradient(self, x, params, state, solution, g):
        z = solution.z_star
        if g.dtype != z.dtype and np.dtype(g.dtype).kind == "f":
            g = g.astype(z.dtype)         # a float32 cotangent of a float64 output, as the steady-state models take
        vjp = _hold_rows_vjp(self._theta_vjp(x, params, state), solution.held)
        return ode_parameter_gradient(vjp, solution.original, g, self.adjoint)

    def _unrolled(self, x, params, state, u0, u0_pullback, depth, extra_nfe):
        """Fixed-depth mode: z_k = f((z_{k-1}, x)) for k = 1..depth from u0, with exact backpropagation."""
        vjp = self._theta_vjp(x, params, state)
        z, pullbacks = u0, []
        for _ in range(depth):
            z, pb = vjp(z)
            pullbacks.append(pb)
        xp = get_namespace(z)
        residual = xp.abs(self._f(x, params, state)(z) - z).reshape(z.shape[0], -1).max(axis=1)
        solution = DeepEquilibriumSolution(z_star=z, u0=u0, residual=residual, jacobian_loss=0.0,
                                           nfev=depth + extra_nfe + 1, result=None, original=None)
        new_state = {**state, "solution": solution, "fixed_depth": depth}

        def pullback(dy, *, d_jacobian_loss=None, d_skip_loss=None):
            for value, name in ((d_jacobian_loss, "d_jacobian_loss"), (d_skip_loss, "d_skip_loss")):
                if value is not None:
                    _check_loss_cotangent(value, name)     # (the unrolled chain has neither loss)
            v = self.output_vjp(dy)
            dx, dpm = None, None
            for pb in reversed(pullbacks):
                v, (dx_k, dp_k) = pb(v)
                dx, dpm = tree_add(dx, dx_k), tree_add(dpm, dp_k)
            return self._add_initial_guess_cotangent(dx, dpm, params, u0_pullback, v)

        return self.output(z), pullback, new_state

    # -- forward mode -------------------------------------------------------------------------------------
    def jvp(self, x, params, state, dx, dparams=None):
        """Tangent of z*: solve (I − ∂f/∂z) dz* = ∂f/∂x dx + ∂f/∂θ dθ (GMRES on JVPs, tight tolerance).
        Steady-state models only: problem_type="ode" (a neural ODE, whose output z(t1) is not a fixed point) raises
        NotImplementedError; use ``nn.vjp`` there."""
        if self.problem_type == "ode":
            raise NotImplementedError(
                f"{type(self).__name__}.jvp is the tangent of a fixed point; with problem_type='ode' the output is "
                "z(t1) of the neural ODE, whose forward-mode derivative is not implemented: use nn.vjp (reverse "
                "mode, through the ODE adjoint) instead")
        y, new_state = self(x, params, state)
        z = new_state["solution"].z_star
        model, pm, sm = self.model, params["model"], state["model"]
        dpm = None if dparams is None else dparams.get("model")
        zeros_z = get_namespace(z).zeros_like(z)
        zeros_x = tree_map(lambda a: a * 0, x)
        _, tangent = model.linearize((z, x), pm, sm)            # ∂f at (z*, x), set up once for GMRES
        rhs = tangent((zeros_z, dx)) if dpm is None else model.jvp((z, x), pm, sm, (zeros_z, dx), dpm)[1]
        shape = z.shape
        n = int(np.prod(shape[1:]))

        def matvec(v):
            return v - tangent((v.reshape(shape), zeros_x)).reshape(shape[0], -1)

        tol = 1e-10 if z.dtype == np.float64 else 1e-5
        sol = GMRES(rtol=tol, atol=0.0, restart=min(n, 30), max_steps=10 * n + 50).solve(
            LinearOperator(matvec, shape=(n, n), dtype=z.dtype), rhs.reshape(shape[0], -1))
        warn_failed(f"the tangent solve of {type(self).__name__}.jvp", sol.result,
                    "Their tangents are not the derivative of z*: I − ∂f/∂z is singular or ill-conditioned there")
        return y, self.output(sol.value.reshape(shape))


def _check_loss_cotangent(value, name):
    """``value`` when it is a finite real number (or 0-d array): the cotangent of a scalar loss (a NaN made every
    gradient NaN without a word; an array or a string failed in NumPy's words)."""
    shape = getattr(value, "shape", ())
    kind = getattr(getattr(value, "dtype", None), "kind", "f")
    if isinstance(value, bool) or not (isinstance(value, numbers.Real) or (shape == () and kind in "fiu"
                                                                           and hasattr(value, "dtype"))):
        raise TypeError(f"{name} must be a real number (the weight of a scalar loss), got "
                        f"{type(value).__name__}{' of shape ' + str(tuple(shape)) if shape else ''}")
    if not np.isfinite(float(value)):
        raise ValueError(f"{name} must be finite, got {float(value)!r}")
    return value


def _warn_once(message):
    """A RuntimeWarning at the user's call site (the first frame outside deqcore), once per site and message."""
    filename, lineno, module_globals = _warn._call_site()
    key = (message, filename, lineno)
    if key not in _warn._SEEN:
        _warn._SEEN.add(key)
        warnings.warn_explicit(message, RuntimeWarning, filename, lineno,
                               module=module_globals.get("__name__", "<string>"), registry=None)


def _model_mismatch(model_name, out, z, x):
    """The error for a model whose output does not match z, naming what the user passed."""
    got_shape, got_dtype = tuple(getattr(out, "shape", ())), getattr(out, "dtype", type(out).__name__)
    if got_dtype != z.dtype:
        return TypeError(
            f"{model_name}: the model returned dtype {got_dtype} for x of dtype {x.dtype} (z has x's dtype): "
            f"the parameters and x must share one dtype; cast x or the parameters")
    return ValueError(
        f"{model_name}: the model returned shape {got_shape} but z has shape {tuple(z.shape)} (zeros shaped like x "
        "for init='zeros', or the initial guess's shape): the model must map (z, x) to an array shaped like z; "
        "check x's shape and the layers' widths")


def _split_model_cotangent(result):
    """model.vjp over (z, x) gives ((dz, dx), dparams): return (dz, (dx, dparams))."""
    (dz, dx), dparams = result
    return dz, (dx, dparams)


def _model_cotangent(result):
    """For u0 = f((0, x)): the cotangent of (x, params)."""
    (_, dx), dparams = result
    return dx, dparams


def _fixed_point_checked_before(f, u0, solver, atol, rtol, max_steps):
    """``solve_equilibrium(f, u0, solver, ...)`` for a root solver without the root API's argument checks (see
    ``DeepEquilibriumNetwork._solve``): the same solve, from f(u0) evaluated here."""
    from ..root.api import _solve

    return _solve(f, u0, f(u0), solver, args=(), jac=None, atol=atol, rtol=rtol, max_steps=max_steps, batched=True,
                  throw=False, mode="fixed_point", compact=False)


#: the checked first evaluations' signatures a model remembers (cleared when full)
_SIGNATURES_KEPT = 16


def _call_signature(z, x, params, state):
    """A hashable key of what the layers' input checks read on f((z, x)): the types, shapes and dtypes of z, x
    and the parameters' and state's arrays, the trees' keys and their other leaves (numbers, strings, flags,
    None); None when the state or parameters hold anything else (such a call is always checked).

    >>> import numpy as np
    >>> _call_signature(np.zeros((2, 3)), np.ones((2, 3)), {"w": np.ones((3, 3))}, {"training": True})[2:]
    ((('w', (<class 'numpy.ndarray'>, (3, 3), '<f8')),), (('training', (<class 'bool'>, True)),))
    >>> _call_signature(np.zeros(2), np.ones(2), {}, {"f": len}) is None
    True
    """
    try:
        return (_leaf_signature(z), _leaf_signature(x), _tree_signature(params), _tree_signature(state))
    except _Unsigned:
        return None


class _Unsigned(Exception):
    """A leaf without a signature."""


def _leaf_signature(a):
    if type(a) is np.ndarray:                   # (the usual leaf: its shape is a tuple, its dtype a np.dtype)
        return np.ndarray, a.shape, a.dtype.str
    shape, dtype = getattr(a, "shape", None), getattr(a, "dtype", None)
    if shape is None or dtype is None:
        raise _Unsigned
    return type(a), tuple(shape), np.dtype(dtype).str


_SCALARS = (bool, int, float, str)


def _tree_signature(tree):
    kind = type(tree)
    if kind is np.ndarray:                      # (the usual leaf first, then the layers' dicts of them)
        return _leaf_signature(tree)
    if isinstance(tree, dict):
        return tuple([(key, _tree_signature(value)) for key, value in tree.items()])
    if isinstance(tree, (tuple, list)):
        return (type(tree),) + tuple([_tree_signature(value) for value in tree])
    if tree is None:
        return None
    if kind in _SCALARS:
        return kind, tree
    if isinstance(tree, np.generic):
        return kind, tree.item()
    return _leaf_signature(tree)


def _check_tspan(tspan):
    if not isinstance(tspan, (tuple, list)) or len(tspan) != 2:
        raise ValueError(f"tspan must be a pair (t0, t1), got {tspan!r}")
    t0, t1 = tspan
    if not all(isinstance(t, numbers.Real) and np.isfinite(t) for t in (t0, t1)) or t0 == t1:
        raise ValueError(f"tspan must hold two different finite times, got {tspan!r}")
    return float(t0), float(t1)


def _default_ode_adjoint():
    return GaussAdjoint()


class SkipDeepEquilibriumNetwork(DeepEquilibriumNetwork):
    """A DEQ whose solve starts from a learned guess u0 = init_model(x) (Pal et al. 2022); with
    ``init_model=None`` the Skip-Reg variant, u0 = f((0, x)). The skip loss mean((z* − u0)²) is in
    ``state["solution"].skip_loss``; pass ``d_skip_loss=weight`` to the pullback to train u0.

    >>> import numpy as np, deqcore as dq
    >>> from deqcore import nn
    >>> deq = dq.SkipDeepEquilibriumNetwork(
    ...     nn.Parallel(nn.add, nn.Dense(2, 2, use_bias=False), nn.Dense(2, 2, use_bias=False)),
    ...     nn.Dense(2, 2), dq.Anderson())
    >>> params, state = nn.setup(np.random.default_rng(0), deq)
    >>> sorted(params)
    ['init', 'model']
    """

    def __init__(self, model, init_model, solver, **settings):
        if "init" in settings:
            raise TypeError("SkipDeepEquilibriumNetwork takes the initial guess as init_model, not init=")
        if init_model is not None and not isinstance(init_model, Layer):
            raise TypeError(f"init_model must be an nn.Layer or None, got {type(init_model).__name__}")
        super().__init__(model, solver, init="one_step" if init_model is None else init_model, **settings)


def _zero_nonfinite_samples(a):
    """``(a, bad)``: ``a`` with its non-finite samples (rows along the leading axis) zeroed and the bool mask of
    those samples, or ``(a, None)`` when every sample is finite. A steady-state model starts such a sample from
    zeros; an ODE model, which integrates its batch as one system, holds it at its start (see :func:`_hold_rows`)."""
    xp = get_namespace(a)
    bad = ~xp.isfinite(a.reshape(a.shape[0], -1)).all(axis=1)
    if not bool(bad.any()):
        return a, None
    return xp.where(_row_mask(bad, a), xp.zeros((), dtype=a.dtype), a), bad


def _row_mask(rows, z):
    """The per-sample bool ``rows`` shaped to broadcast over z's sample rows."""
    return rows.reshape((-1,) + (1,) * (z.ndim - 1))


def _hold_rows(f, held):
    """z ↦ f(z) with the ``held`` samples' rows replaced by z's (dz/dt = f(z) − z is 0 there), or f itself."""
    if held is None:
        return f
    xp = get_namespace(held)
    return lambda z: xp.where(_row_mask(held, z), z, f(z))


def _hold_rows_vjp(vjp, held):
    """The VJP of :func:`_hold_rows`: the held rows pass their cotangent through as the identity's and send none
    into f (so no input or parameter gradient from them)."""
    if held is None:
        return vjp
    xp = get_namespace(held)

    def held_vjp(z):
        fz, pullback = vjp(z)
        mask = _row_mask(held, z)

        def held_pullback(a):
            dz, rest = pullback(xp.where(mask, xp.zeros((), dtype=a.dtype), a))
            return xp.where(mask, a, dz), rest

        return xp.where(mask, z, fz), held_pullback

    return held_vjp
