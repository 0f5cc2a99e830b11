"""What a DEQ model records about its solve: :class:`DeepEquilibriumSolution`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["DeepEquilibriumSolution"]


@dataclass
class DeepEquilibriumSolution:
    """The solve behind one call of a DEQ model, stored in ``state["solution"]``.

    Attributes:
        z_star: the fixed point (or steady state) reached; the best iterate when the solve failed.
        u0: the initial condition the solve started from.
        residual: per-sample max-norm of f(z*) − z*.
        jacobian_loss: Hutchinson estimate of ‖∂f/∂z(z*)‖_F² / numel per sample, averaged over the batch
            (0.0 when ``jacobian_regularization`` is None); add ``weight * jacobian_loss`` to the loss and pass
            ``d_jacobian_loss=weight`` to the pullback.
        skip_loss: mean((z* − u0)²), the skip-DEQ loss (Pal et al. 2022) with z* held fixed; pass
            ``d_skip_loss=weight`` to the pullback to train the initial guess.
        nfev: evaluations of f in the forward pass (the solve plus extra evaluations such as the initial step).
        result: the return code(s) of the solve (per sample; non-convergence does not raise by default).
        original: the underlying :class:`deqcore.Solution` (or ODE solution).
        adjoint: statistics of the backward solve, filled in when the pullback runs.
        held: ODE models (``problem_type="ode"``, ``MultiScaleNeuralODE``): per-sample bool, True where a
            non-finite input held the sample at its start (its code DIVERGED); None when no sample was held.

    >>> import numpy as np, deqcore as dq
    >>> from deqcore import nn
    >>> deq = dq.DeepEquilibriumNetwork(nn.Parallel(nn.add, nn.Dense(2, 2, use_bias=False), nn.NoOpLayer()),
    ...                                 dq.Anderson(), atol=1e-8, rtol=0.0)
    >>> params, state = nn.setup(np.random.default_rng(0), deq)
    >>> params["model"]["layer_1"]["weight"] *= 0.1
    >>> _, state = deq(np.ones((4, 2)), params, state)
    >>> solution = state["solution"]
    >>> bool(solution.success.all()), bool((solution.residual <= 1e-8).all()), solution.nfev > 1
    (True, True, True)
    """

    z_star: Any
    u0: Any
    residual: Any
    jacobian_loss: Any
    nfev: int
    result: Any = None
    original: Any = None
    skip_loss: Any = 0.0
    adjoint: Any = None
    held: Any = None

    #: a record of one call, not part of the model: ``nn.save`` leaves it out of a saved state
    nn_transient = True

    @property
    def success(self):
        """True where the solve converged (per sample)."""
        return self.result == 0
