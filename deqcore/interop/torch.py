"""PyTorch adapter: solve a torch model's fixed point with deqcore and differentiate it implicitly.

Tensors cross to deqcore as zero-copy views (CPU tensors as NumPy arrays, CUDA tensors as CuPy arrays through
DLPack) and back the same way. Tensors that require grad are detached first; non-contiguous ones are copied.
f is always evaluated by torch: under ``torch.no_grad`` during the solve, and with autograd for the VJPs of
the implicit adjoint. Don't modify ``z`` in place inside f: during the solve it is a view of the solver's
array.

>>> import torch, deqcore as dq
>>> from deqcore.interop import torch as dqt
>>> _ = torch.manual_seed(0)
>>> f = dqt.example_cell(4, 3)                    # z -> tanh(W z + U x + b) with ||W||_2 = 0.5
>>> layer = dqt.DEQ(f, atol=1e-8, rtol=1e-8, max_steps=100)
>>> x = torch.randn(2, 3, dtype=torch.float64)
>>> z = layer(x, torch.zeros(2, 4, dtype=torch.float64))     # z0=None starts from zeros shaped like x
>>> bool(torch.allclose(z, f(z, x), atol=1e-6)), layer.last_solution.success.tolist()
(True, [True, True])
>>> z.sum().backward()                            # implicit adjoint: gradients reach f's parameters
>>> f.W.weight.grad.shape
torch.Size([4, 4])
"""

from __future__ import annotations

import warnings
from typing import Callable

import numpy as np

from ..adjoint.steady_state import (FixedPointVJP, OneStepGradient, PhantomGradient, SteadyStateAdjoint,
                                    preconditioner_from_forward)
from ..backend import default_kernel
from ..nn.core import Layer
from ..nn.core import testmode as _testmode
from ..nn.core import trainmode as _trainmode
from ..nn.tree import tree_flatten, tree_unflatten
from ..root import RootSolver
from ._common import check_adjoint, check_compact, check_dtype, check_options, import_framework, solve, writable

torch = import_framework("torch", "torch")

__all__ = ["DEQ", "TorchLayer", "to_array", "from_array", "example_cell"]

_DTYPE_NAMES = {torch.float32: "float32", torch.float64: "float64"}

#: runs a function eagerly under ``torch.compile`` (a graph break around it): the solves and pullbacks are NumPy,
#: CuPy and Numba code that dynamo cannot trace
_eager = torch.compiler.disable


def to_array(tensor, name: str = "tensor"):
    """A NumPy (CPU) or CuPy (CUDA) array sharing memory with ``tensor`` (detached; copied only when it is not
    contiguous).

    >>> import torch
    >>> t = torch.ones(3, dtype=torch.float64, requires_grad=True)
    >>> a = to_array(t, "t"); a[0] = 5.0; float(t.detach()[0])
    5.0
    >>> to_array(torch.ones(2, dtype=torch.float16), "x")
    Traceback (most recent call last):
    ...
    TypeError: x has dtype float16; deqcore solves in float32 or float64: cast it first ...
    """
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    check_dtype(_DTYPE_NAMES.get(tensor.dtype, str(tensor.dtype).replace("torch.", "")), name)
    tensor = tensor.detach()
    if not tensor.is_contiguous():
        tensor = tensor.contiguous()
    if tensor.device.type == "cpu":
        return tensor.numpy()
    if tensor.device.type == "cuda":
        import cupy

        return cupy.from_dlpack(tensor)
    raise ValueError(f"{name} lives on device {tensor.device}; deqcore runs on CPU (NumPy) and CUDA (CuPy)")


def from_array(array):
    """A torch tensor sharing memory with a NumPy or CuPy array (read-only NumPy arrays are copied).

    >>> import numpy as np
    >>> from_array(np.arange(3.0))
    tensor([0., 1., 2.], dtype=torch.float64)
    """
    if isinstance(array, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(writable(array)))
    return torch.from_dlpack(array)


def _check_like(out, like, name: str, what: str):
    """``out`` must be a tensor with the shape, dtype and device of ``like``; errors say what the user passed
    (``z`` starts as z0, or zeros shaped like x) and how to fix it."""
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{name} must return a torch.Tensor, got {type(out).__name__}")
    if out.shape != like.shape:
        raise ValueError(f"{name}(z, x) returned shape {tuple(out.shape)} for {what} of shape {tuple(like.shape)}; "
                         "z starts as z0 (zeros shaped like x when z0 is None): pass z0 with the shape of f's "
                         "output, e.g. layer(x, z0=torch.zeros(batch, width))")
    if out.dtype != like.dtype:
        raise TypeError(f"{name}(z, x) returned dtype {out.dtype} for {what} of dtype {like.dtype} (x's and z0's "
                        "dtype): give x, z0 and f's parameters one dtype (x.double() or f.double(), or .float())")
    if out.device != like.device:
        raise ValueError(f"{name} returned a tensor on {out.device}; {what} is on {like.device}")
    return out


def _parameters_matching(f, x) -> tuple:
    """The parameters of a module f that require grad (none for a plain function), after checking in the same pass
    that f's floating parameters share x's dtype and device (named errors, not a torch matmul error)."""
    if not isinstance(f, torch.nn.Module):
        return ()
    dtype, device, wanted = x.dtype, x.device, []
    for p in f.parameters():
        if (p.dtype != dtype and p.is_floating_point()) or p.device != device:
            _check_parameters_match(f, x)          # raises, naming the parameter
        if p.requires_grad:
            wanted.append(p)
    return tuple(wanted)


def _check_parameters_match(f, x):
    """f's floating parameters must share x's dtype and device (named errors, not a torch matmul error)."""
    if not isinstance(f, torch.nn.Module):
        return
    for name, p in f.named_parameters():
        if p.is_floating_point() and p.dtype != x.dtype:
            raise TypeError(f"x has dtype {x.dtype} but f's parameter {name!r} has {p.dtype}: cast x "
                            f"(x.to({p.dtype})) or the module (f.to({x.dtype})) so that they agree")
        if p.device != x.device:
            raise ValueError(f"x is on {x.device} but f's parameter {name!r} is on {p.device}: move one of them")


class DEQ(torch.nn.Module):
    """A deep equilibrium layer: ``layer(x, z0=None)`` returns z* with z* = f(z*, x).

    The fixed point is found by a deqcore solver on zero-copy views of the tensors; the backward pass solves
    the implicit adjoint (I − ∂f/∂zᵀ) λ = ∂L/∂z* in deqcore with VJPs of f from torch autograd, then hands λ
    to one autograd call for the gradients of x and of f's parameters.

    Args:
        f: a ``torch.nn.Module`` or function called as ``f(z, x)``, returning a tensor shaped like z (and with
            z's dtype: x, z0 and the parameters of f share one dtype).
            Gradients reach the parameters of a module f (and x); tensors captured by a plain function get
            none (the first backward pass warns when f uses such tensors).
        solver: a deqcore fixed-point solver (default ``dq.Anderson()``).
        adjoint: ``dq.SteadyStateAdjoint(...)`` (default: dense LU up to 50 state elements per sample, else
            the plain iteration on VJPs for fast-contracting samples and GMRES for the others, to this layer's
            tolerance within ``max_steps`` VJPs, preconditioned by what the forward solve learnt; ``dq.SteadyStateAdjoint(accuracy="cheap")`` is DeepEquilibriumNetworks.jl's cheaper,
            inexact budget), ``dq.OneStepGradient()`` or ``dq.PhantomGradient(...)``.
        atol, rtol, max_steps: the forward solve's tolerances (defaults as deqcore's DEQ models: cheap
            solves, 1e-3 and 32 steps; tighten them for accurate gradients).
        batched: True (default) treats each sample along the leading axis as its own system, with its own
            convergence test; f must then treat samples independently (no batch norm over the batch).
            False solves the whole array as one system.
        compact: True declares f's rows independent (row i of f(z, x) depends on row i of z and of x alone, for
            any number of rows): x then goes to the solver as a per-sample argument and finished samples stop
            costing f-evaluations (active-set compaction, in the forward solve, with the solvers that support
            it: Anderson, Broyden, LimitedMemoryBroyden, FixedPointIteration); ``last_solution.stats[
            "row_evaluations"]`` counts the rows f was evaluated on. The results are those of the uncompacted
            solve up to round-off (f on fewer rows may round differently). Default False: the adapter cannot see
            whether a torch f couples the rows (``BatchNorm`` in training mode does; so does anything that
            reads the batch size), so it is yours to declare. Needs ``batched=True``.

    After a call, ``layer.last_solution`` holds the forward ``dq.Solution`` (``.stats["nfev"]``,
    ``.residual``, ``.result``, ``.success``; codes per sample when batched) and, after a backward pass,
    ``layer.last_adjoint`` holds the adjoint's ``AdjointInfo`` (``nvjp``, ``num_steps``, ``result``).
    A solve that does not converge is recorded there, not raised, and the best iterate is returned; a
    ``RuntimeWarning`` names the code and the count (once per call site). A sample whose x holds NaN or
    infinity is that sample's DIVERGED code; the others are unaffected.

    >>> import torch, deqcore as dq
    >>> _ = torch.manual_seed(0)
    >>> f = example_cell(4, 3, norm=0.95)
    >>> scales = torch.logspace(-3, 2, 8, dtype=torch.float64)[:, None]     # large inputs saturate tanh early
    >>> x = torch.randn(8, 3, dtype=torch.float64) * scales
    >>> layer = DEQ(f, solver=dq.FixedPointIteration(), atol=1e-10, rtol=0.0, max_steps=500, compact=True)
    >>> z = layer(x, torch.zeros(8, 4, dtype=torch.float64))   # compact=True: f's rows are independent
    >>> stats = layer.last_solution.stats
    >>> stats["row_evaluations"] < 8 * stats["nfev"]          # finished samples left f's evaluations
    True
    """

    def __init__(self, f: Callable, solver: RootSolver | None = None,
                 adjoint: SteadyStateAdjoint | OneStepGradient | PhantomGradient | None = None, *,
                 atol: float = 1e-3, rtol: float = 1e-3, max_steps: int = 32, batched: bool = True,
                 compact: bool = False) -> None:
        super().__init__()
        if not callable(f):
            raise TypeError(f"f must be a torch.nn.Module or a function f(z, x), got {type(f).__name__}")
        self.f = f
        self.solver, self.atol, self.rtol, self.max_steps = check_options(solver, atol, rtol, max_steps)
        self.adjoint = check_adjoint(adjoint)
        if not isinstance(batched, bool):
            raise TypeError(f"batched must be a bool, got {type(batched).__name__}")
        self.batched = batched
        self.compact = check_compact(compact, batched)
        self.last_solution = None
        self.last_adjoint = None

    def extra_repr(self):
        return (f"solver={self.solver!r}, adjoint={self.adjoint!r}, atol={self.atol}, rtol={self.rtol}, "
                f"max_steps={self.max_steps}, batched={self.batched}" + (", compact=True" if self.compact else ""))

    @_eager
    def forward(self, x: torch.Tensor, z0: torch.Tensor | None = None) -> torch.Tensor:
        """z* for input ``x`` (batch on the leading axis), started from ``z0`` (default zeros like x)."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        check_dtype(_DTYPE_NAMES.get(x.dtype, str(x.dtype).replace("torch.", "")), "x")
        params = _parameters_matching(self.f, x)
        if self.batched and x.ndim < (2 if z0 is None else 1):     # z (z0, or zeros like x) needs (batch, n, ...)
            raise ValueError(f"x must have shape (batch, ...) with batched=True; got {tuple(x.shape)} (add a "
                             "batch axis, pass z0 of shape (batch, n), or pass batched=False)")
        if x.numel() == 0:
            raise ValueError(f"x must have at least one sample and element, got shape {tuple(x.shape)}")
        from_zeros = z0 is None
        if from_zeros:
            z0 = torch.zeros_like(x, memory_format=torch.contiguous_format)
        else:
            if not isinstance(z0, torch.Tensor):
                raise TypeError(f"z0 must be a torch.Tensor or None, got {type(z0).__name__}")
            if z0.device != x.device:
                raise ValueError(f"z0 is on {z0.device} but x is on {x.device}; put them on one device")
            if z0.dtype != x.dtype:
                raise TypeError(f"z0 has dtype {z0.dtype} but x has {x.dtype}; use one dtype")
            if self.batched and (z0.ndim < 2 or z0.shape[0] != x.shape[0]):
                raise ValueError(f"z0 must have the batch size of x ({x.shape[0]}) on its leading axis and the "
                                 f"state after it, shape (batch, n, ...); got shape {tuple(z0.shape)}")
            z0 = z0.detach().clone(memory_format=torch.contiguous_format)   # the solver may write into it
            if z0.numel() == 0 or not _all_finite(z0):
                raise ValueError(f"z0 must be a non-empty tensor of finite numbers, got shape {tuple(z0.shape)}"
                                 + ("" if z0.numel() == 0 else " holding NaN or infinity"))
        try:
            return _ImplicitFixedPoint.apply(self, _members(self.f), x, z0, *params)
        except RuntimeError as err:      # e.g. torch's "mat1 and mat2 shapes cannot be multiplied" from f(0, x)
            if from_zeros and hasattr(err, "add_note"):
                err.add_note(f"z0=None started z as zeros shaped like x {tuple(x.shape)}: if f's state has "
                             "another shape, pass z0, e.g. layer(x, torch.zeros(batch, width))")
            raise

    def _solve(self, x, z0):
        if x.requires_grad:
            x = x.detach()
        if self.compact:              # x per sample: the solver hands f the rows of x that go with z's rows
            x_array = to_array(x, "x")
            fn, args = _fast_map_rows(self.f, x, x_array, z0), (x_array,)
        else:
            fn, args = _fast_map(self.f, x, z0), ()
        record = self.__dict__        # plain attributes, without torch.nn.Module.__setattr__'s checks (µs a call)
        record["last_adjoint"] = None
        with torch.no_grad():
            record["last_solution"] = solve(fn, to_array(z0, "z0"), self.solver, atol=self.atol, rtol=self.rtol,
                                            max_steps=self.max_steps, batched=self.batched, args=args,
                                            compact=self.compact, finite=True, conforming=True,
                                            where="the forward solve of deqcore.interop.torch.DEQ")
        return _as_tensor(self.last_solution.value)

    def _gradients(self, x, z_star, g, params, forward=None, members=None):
        """``(dx, dparams)`` by the implicit adjoint for the cotangent ``g`` of z*. ``members``: f's parameters and
        buffers during the forward call (:func:`_members`), which f is evaluated with again if they changed since
        (``torch.func.functional_call`` swaps them for the call only)."""
        f = _rebound(self.f, members)
        want_x = x.requires_grad
        x_in = x.detach().requires_grad_(True) if want_x else x    # (x without grad has no graph to detach from)
        inputs = ((x_in,) if want_x else ()) + params
        full = isinstance(self.adjoint, PhantomGradient)     # it needs θ-cotangents at every step
        record = self.__dict__

        def graph_at(zt):
            """f's graph at the leaf ``zt`` and the pullback on it (z's alone, ``v -> ∂f/∂zᵀ v``, unless ``full``)."""
            with torch.enable_grad():
                fz = _check_like(f(zt, x_in), zt, "f", "z")
            if not record.get("_captures_checked"):     # once per layer, on f's graph at z* (no extra call)
                record["_captures_checked"] = True
                _warn_if_captured(fz, (zt,) + inputs)
            if not full:
                return _z_vjp(fz, zt), fz

            def pullback(v):
                grads = _grad(fz, (zt,) + inputs, _as_tensor(v), retain=True)
                dz = to_array(_zero_if_none(grads[0], zt), "dz")
                return dz, tuple(to_array(_zero_if_none(d, t), "grad") for d, t in zip(grads[1:], inputs))

            return pullback, fz

        def vjp(z):
            pullback, fz = graph_at(from_array(z).requires_grad_(True))
            return to_array(fz, "f(z, x)"), (pullback if full else _with_no_theta(pullback))

        # the graph at z* on a leaf sharing z*'s memory (no round trip through an array), reused by every VJP
        z_leaf = z_star.detach().requires_grad_(True)
        pullback, fz = graph_at(z_leaf)
        z_arr = to_array(z_star, "z_star")
        if full:
            problem = FixedPointVJP(z_arr, vjp, batched=self.batched, pullback=pullback)
        else:       # (the adjoint's VJPs call the z-only pullback itself: one Python call less per VJP)
            problem = FixedPointVJP(z_arr, vjp, batched=self.batched, pullback=_with_no_theta(pullback),
                                    pullback_z=pullback)
        adjoint = self.adjoint
        if not full and isinstance(adjoint, SteadyStateAdjoint):
            adjoint = adjoint.with_forward(self.atol, self.rtol, self.max_steps)
            learned = getattr(forward, "learned", None) or {}
            dtheta, info = None, adjoint.solve_adjoint(problem, to_array(g, "grad_output"),
                                                       preconditioner=preconditioner_from_forward(learned))
        else:
            dtheta, info = adjoint.gradient(problem, to_array(g, "grad_output"))
        self.__dict__["last_adjoint"] = info
        if not inputs:
            return None, ()
        if full:
            grads = tuple(from_array(d) for d in dtheta)
        else:
            grads = _grad(fz, inputs, from_array(info.lam), retain=False)
        grads = list(grads)
        dx = grads.pop(0) if want_x else None
        return dx, tuple(grads)


def _members(f):
    """f's parameters and buffers by name (None for a plain function), as the forward call sees them."""
    if not isinstance(f, torch.nn.Module):
        return None
    return {**dict(f.named_parameters(remove_duplicate=False)), **dict(f.named_buffers(remove_duplicate=False))}


def _rebound(f, members):
    """f as the forward call evaluated it: f itself, or, when its parameters or buffers are no longer those of the
    forward call (which ran under ``torch.func.functional_call``), f called with those."""
    if members is None:
        return f
    now = _members(f)
    if now.keys() == members.keys() and all(now[name] is t for name, t in members.items()):
        return f
    return lambda z, x: torch.func.functional_call(f, members, (z, x))


def _warn_if_captured(out, inputs):
    """A RuntimeWarning when ``out = f(z, x)``'s graph reaches tensors that require grad but are none of
    ``inputs`` (z, x and the parameters of a module f): tensors a plain function captures, or a module's
    unregistered attributes. The adapter gives them no gradient, which would otherwise go unnoticed."""
    if out.grad_fn is None:
        return
    known = {id(t) for t in inputs}
    captured, seen, stack = [], set(), [out.grad_fn]
    while stack:
        node = stack.pop()
        variable = getattr(node, "variable", None)
        if isinstance(variable, torch.Tensor) and id(variable) not in known:
            captured.append(tuple(variable.shape))
        for child, _ in node.next_functions:
            if child is not None and child not in seen:
                seen.add(child)
                stack.append(child)
    if captured:
        warnings.warn(
            f"f uses {len(captured)} tensor(s) that require grad (shapes {', '.join(map(str, captured[:4]))}) but "
            "are not parameters of f: deqcore.interop.torch.DEQ gives them no gradient. Make f a torch.nn.Module "
            "holding them as parameters (or registered submodules)", RuntimeWarning, stacklevel=2)


def _all_finite(t) -> bool:
    """``bool(torch.isfinite(t).all())`` for a contiguous float32/float64 tensor; on the CPU one compiled pass over
    its NumPy view (torch's test makes a boolean temporary and a reduction: 50-70 µs at 64 × 256, a few here)."""
    if t.device.type == "cpu":
        return default_kernel("all_finite", np)(t.numpy())
    return bool(torch.isfinite(t).all())


def _fast_map(f, x, z0):
    """``fn(z)`` for the forward solve: f on a zero-copy tensor view of the solver's array, its output as an
    array. The output's type, shape, dtype and device are checked on every call (a few attribute reads); the
    views skip the generic conversions' checks, which hold for the solver's own arrays."""
    shape, dtype, device = z0.shape, z0.dtype, z0.device
    on_cpu = device.type == "cpu"

    def fn(z):
        if on_cpu and type(z) is np.ndarray and z.flags.c_contiguous and z.flags.writeable:
            zt = torch.from_numpy(z)
        else:
            zt = from_array(z)
        out = f(zt, x)
        if type(out) is not torch.Tensor or out.shape != shape or out.dtype != dtype or out.device != device:
            _check_like(out, zt, "f", "z")            # raises the named error (or accepts a Tensor subclass)
            return to_array(out, "f(z, x)")
        if on_cpu and out.is_contiguous():
            return out.detach().numpy() if out.requires_grad else out.numpy()
        return to_array(out, "f(z, x)")

    return fn


def _fast_map_rows(f, x, x_array, z0):
    """``fn(z, x_rows)`` for a compacted forward solve: f on tensor views of some rows of z and the matching rows
    of x (``x`` itself when the solver passes all of ``x_array``), its output as an array."""
    dtype, device = z0.dtype, z0.device
    on_cpu = device.type == "cpu"

    def fn(z, x_rows):
        zt = _as_tensor(z)
        xt = x if x_rows is x_array else _as_tensor(x_rows)
        out = f(zt, xt)
        if type(out) is not torch.Tensor or out.shape != zt.shape or out.dtype != dtype or out.device != device:
            _check_like(out, zt, "f", "z")
            return to_array(out, "f(z, x)")
        if on_cpu and out.is_contiguous():
            return out.detach().numpy() if out.requires_grad else out.numpy()
        return to_array(out, "f(z, x)")

    return fn


def _as_tensor(v):
    """A tensor view of a solver's array (the generic conversion when it is not a plain writable C array)."""
    if type(v) is np.ndarray and v.flags.c_contiguous and v.flags.writeable:
        return torch.from_numpy(v)
    return from_array(v)


try:   # the autograd engine's entry without torch.autograd.grad's per-call argument checks (which hold here)
    from torch.autograd.graph import _engine_run_backward as _ENGINE
except ImportError:  # pragma: no cover - a torch without it takes the public path
    _ENGINE = None


def _grad(output, inputs, cotangent, retain):
    """``torch.autograd.grad(output, inputs, cotangent, allow_unused=True)`` for a cotangent of output's shape and
    dtype (the engine's call, as autograd.grad makes it after its checks)."""
    if _ENGINE is not None and cotangent.shape == output.shape and cotangent.dtype == output.dtype:
        return _ENGINE((output,), (cotangent,), retain, False, tuple(inputs), True, accumulate_grad=False)
    return torch.autograd.grad(output, inputs, cotangent, retain_graph=retain, allow_unused=True)


def _z_vjp(fz, zt):
    """``v -> ∂f/∂zᵀ v`` on one retained graph, arrays in and out. The adjoint iterations hand it the same few
    arrays over and over (their buffers, rewritten in place): the tensor view of each of the first
    :data:`_VIEWS_KEPT` arrays it is given is kept (with the array, so that its id stays its own) and reused."""
    wrt = (zt,)
    on_cpu = zt.device.type == "cpu"
    views: dict = {}

    def vjp(v):
        kept = views.get(id(v))
        if kept is not None and kept[0] is v:
            vt = kept[1]
        elif on_cpu and type(v) is np.ndarray and v.flags.c_contiguous and v.flags.writeable:
            vt = torch.from_numpy(v)                 # a view: it follows the array's later contents
            if len(views) < _VIEWS_KEPT:
                views[id(v)] = (v, vt)
        else:
            vt = from_array(v)                       # (a copy for a read-only array: never kept)
        dz = _grad(fz, wrt, vt, retain=True)[0]
        if dz is None:
            return np.zeros(zt.shape, dtype=v.dtype) if on_cpu else to_array(torch.zeros_like(zt), "dz")
        if on_cpu and dz.is_contiguous():
            return dz.numpy()
        return to_array(dz, "dz")

    return vjp


#: how many VJP input arrays :func:`_z_vjp` keeps tensor views of (the iteration's trial buffers, its cotangent)
_VIEWS_KEPT = 4


def _with_no_theta(vjp):
    """``pullback(v) -> (vjp(v), None)``: a z-only VJP as a pullback with no θ part."""
    return lambda v: (vjp(v), None)


def _zero_if_none(grad, like):
    return torch.zeros_like(like) if grad is None else grad


class _ImplicitFixedPoint(torch.autograd.Function):
    """z* = f(z*, x) forward by a deqcore solve, backward by deqcore's implicit adjoint."""

    @staticmethod
    def forward(ctx, layer, members, x, z0, *params):
        z_star = layer._solve(x, z0)
        ctx.layer, ctx.forward, ctx.members = layer, layer.last_solution, members
        ctx.save_for_backward(x, z_star, *params)
        return z_star

    @staticmethod
    def backward(ctx, grad_z):
        x, z_star, *params = ctx.saved_tensors
        create_graph = torch.is_grad_enabled()
        with torch.no_grad():
            dx, dparams = ctx.layer._gradients(x, z_star, grad_z, tuple(params), ctx.forward, ctx.members)
        if dparams == ():
            dparams = (None,) * len(params)
        grads = _differentiable_once((dx, *dparams), (x, *params, grad_z), create_graph)
        return (None, None, grads[0], None, *grads[1:])


def _differentiable_once(grads, inputs, create_graph):
    """``grads`` as they are, or, under ``create_graph=True`` when one of ``inputs`` requires grad, the same values
    on a graph whose backward raises: a second derivative through the adapter is refused, never silently zero."""
    if not create_graph:
        return grads
    anchors = tuple(t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad)
    if not anchors:
        return grads
    return tuple(None if d is None else _DifferentiableOnce.apply(d, *anchors) for d in grads)


class _DifferentiableOnce(torch.autograd.Function):
    """A gradient of a DEQ or TorchLayer computed with ``create_graph=True``: the same values, and a graph whose
    backward raises (torch's ``once_differentiable`` leaves such a gradient without a graph when the cotangent of
    the output is a constant, so a loss built on it, e.g. a gradient penalty on ``z.sum()``, silently lost its
    second-order terms)."""

    @staticmethod
    def forward(ctx, grad, *anchors):
        return grad.clone()

    @staticmethod
    def backward(ctx, *_):
        raise RuntimeError(
            "deqcore.interop.torch's DEQ and TorchLayer are differentiable once: their gradients cannot be "
            "differentiated again (double backward, e.g. a gradient penalty on a gradient taken with "
            "create_graph=True, is not implemented); take that gradient without create_graph=True")


class TorchLayer(torch.nn.Module):
    """A deqcore layer (a model built from ``deqcore.nn`` or a ``dq.DeepEquilibriumNetwork``) as a
    ``torch.nn.Module``.

    The parameters become ``torch.nn.Parameter``\\ s that share memory with the arrays in ``params`` (so a
    torch optimiser updates them in place); forward runs the deqcore layer on a zero-copy view of x, backward
    its own pullback (``nn.vjp``). ``layer.state`` holds the latest state, ``layer.params`` the parameter
    tree.

    Args:
        model: a ``deqcore.nn.Layer``.
        params, state: from ``nn.setup(rng, model)`` (NumPy float32/float64 arrays, or CuPy ones).

    >>> import numpy as np, torch
    >>> from deqcore import nn
    >>> model = nn.Dense(3, 2)
    >>> params, state = nn.setup(np.random.default_rng(0), model)
    >>> layer = TorchLayer(model, params, state)
    >>> y = layer(torch.ones(4, 3, dtype=torch.float64))
    >>> y.sum().backward()
    >>> layer.weights[0].grad.shape, np.shares_memory(layer.params["weight"], params["weight"])
    (torch.Size([2, 3]), True)
    """

    def __init__(self, model, params, state):
        super().__init__()
        if not isinstance(model, Layer):
            raise TypeError(f"model must be a deqcore.nn.Layer, got {type(model).__name__}")
        leaves, self._treedef = tree_flatten(params)
        tensors = []
        for i, leaf in enumerate(leaves):
            if isinstance(leaf, np.ndarray) and not leaf.flags.writeable:
                raise ValueError(f"params leaf {i} is a read-only array; torch would write into it: "
                                 "pass a copy")
            if not hasattr(leaf, "dtype"):
                raise TypeError(f"params leaf {i} must be an array, got {type(leaf).__name__}")
            check_dtype(str(leaf.dtype), f"params leaf {i}",
                        cast=".astype(np.float32) or .astype(np.float64)")
            tensors.append(torch.nn.Parameter(from_array(leaf)))
        self.model = model
        self.weights = torch.nn.ParameterList(tensors)
        self.state = state

    def train(self, mode: bool = True):
        """torch's train/eval switch, passed on to the deqcore state (``nn.trainmode`` / ``nn.testmode``):
        ``layer.eval()`` freezes a BatchNorm's running statistics and turns dropout off, as in torch."""
        super().train(mode)
        self.state = (_trainmode if mode else _testmode)(self.state)
        return self

    @property
    def params(self):
        """The parameter tree (views of the torch parameters)."""
        return tree_unflatten(self._treedef, [to_array(p, "parameter") for p in self.weights])

    @_eager
    def forward(self, x):
        """The deqcore layer's output for ``x`` (a tensor, batch on the leading axis)."""
        dtypes = {p.dtype for p in self.weights}
        if isinstance(x, torch.Tensor) and x.dtype in _DTYPE_NAMES and dtypes and x.dtype not in dtypes:
            names = ", ".join(map(str, dtypes))
            raise TypeError(f"x has dtype {x.dtype} but the layer's parameters are {names}: cast x (x.to(dtype)) "
                            "or the parameters (nn.setup(..., dtype=...)) so that they agree")
        return _LayerFunction.apply(self, x, *self.weights)


class _LayerFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, layer, x, *weights):
        x_arr = to_array(x, "x")
        params = layer.params
        if any(ctx.needs_input_grad):
            y, ctx.pullback, layer.state = layer.model.vjp(x_arr, params, layer.state)
            ctx.save_for_backward(x, *weights)
        else:
            y, layer.state = layer.model(x_arr, params, layer.state)
        return from_array(y)

    @staticmethod
    def backward(ctx, grad_y):
        create_graph = torch.is_grad_enabled()
        with torch.no_grad():
            dx, dparams = ctx.pullback(to_array(grad_y, "grad_output"))
            grads = (from_array(dx), *(from_array(d) for d in tree_flatten(dparams)[0]))
        grads = _differentiable_once(grads, (*ctx.saved_tensors, grad_y), create_graph)
        return (None, *grads)


class _Cell(torch.nn.Module):
    def __init__(self, width, inputs, norm, dtype):
        super().__init__()
        self.W = torch.nn.Linear(width, width, bias=False, dtype=dtype)
        self.U = torch.nn.Linear(inputs, width, dtype=dtype)
        with torch.no_grad():
            self.W.weight.mul_(norm / torch.linalg.matrix_norm(self.W.weight, ord=2))

    def forward(self, z, x):
        return torch.tanh(self.W(z) + self.U(x))


def example_cell(width: int, inputs: int, *, norm: float = 0.5, dtype=torch.float64):
    """The cell f(z, x) = tanh(W z + U x + b) with ``||W||_2 = norm`` (a contraction for norm < 1), as a
    ``torch.nn.Module``; used in examples, tests and benchmarks.

    >>> f = example_cell(3, 2)
    >>> round(float(torch.linalg.matrix_norm(f.W.weight.detach(), ord=2)), 6)
    0.5
    """
    return _Cell(width, inputs, norm, dtype)
