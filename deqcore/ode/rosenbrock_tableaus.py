"""Coefficients of the Rosenbrock methods, as data, in the transformed form that needs no matrix–vector
product with the Jacobian (Hairer–Wanner II, §IV.7, eq. (7.25)):

    (I/(hγ) − J) u_i = f(t + c_i h, y + Σ_{j<i} a_ij u_j) + Σ_{j<i} (C_ij / h) u_j + h d_i ∂f/∂t,
    y_new = y + Σ m_i u_i,      error estimate  Σ e_i u_i.

With Γ = (γ_ij) the method's lower-triangular coupling matrix (diagonal γ) and α its stage matrix, the
transformed coefficients are a = α Γ⁻¹, C = diag(1/γ) − Γ⁻¹, m = bᵀ Γ⁻¹; :meth:`RosenbrockTableau.standard`
inverts this, and the tests check the classical order conditions on the result.

Sources: Rodas3 — Sandu et al., Atmos. Environ. 31 (1997); Rodas4 — Hairer & Wanner, Solving ODEs II,
§VI.4 (the RODAS code's coefficients); Rodas5P — Steinebach, "Construction of Rosenbrock–Wanner method
Rodas5P and numerical benchmarks within the Julia Differential Equations package", BIT 63:27 (2023). All
three are stiffly accurate: y_new is the last stage's argument plus the last increment, and the error
estimate is that last increment.

Continuous extensions (dense output) of Rodas4 (order 3, the RODAS code's) and Rodas5P (order 4,
Steinebach's) from the same increments, no further evaluation of f: with ``w_q = Σ_i H_qi u_i`` (rows of
``dense``),

    y(t + θh) ≈ (1 − θ) y + θ (y_new + (1 − θ)(w_1 + θ w_2 + θ² w_3 + …)),

i.e. the transformed weights m(θ) = θ m + θ(1 − θ) Σ_q θ^(q−1) H_q (:meth:`RosenbrockTableau.dense_weights`);
the tests check the order conditions Σ b_i(θ) Φ_i(t) = θ^ρ(t)/γ(t) of b(θ) = m(θ) Γ on every tree up to
``dense_order``. Rodas3 has none (its dense output is the cubic Hermite interpolant).

>>> RODAS5P.stages, RODAS5P.order, RODAS5P.embedded_order
(8, 5, 4)
>>> bool(abs(RODAS4.standard()[2].sum() - 1.0) < 1e-12)      # Σ b_i = 1
True
>>> bool(np.allclose(RODAS5P.dense_weights(1.0), RODAS5P.m)), RODAS5P.dense_order   # θ = 1: the step
(True, 4)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["RosenbrockTableau", "RODAS3", "RODAS4", "RODAS5P"]


@dataclass(frozen=True, eq=False)
class RosenbrockTableau:
    """A Rosenbrock method in transformed form (see the module docstring); arrays are ``(s, s)`` / ``(s,)``."""

    name: str
    gamma: float
    a: np.ndarray
    C: np.ndarray
    c: np.ndarray
    d: np.ndarray
    m: np.ndarray
    e: np.ndarray
    order: int
    embedded_order: int
    #: ``(q, s)`` coefficients H of the continuous extension (module docstring), or None (Hermite dense output)
    dense: np.ndarray | None = None
    #: order of the continuous extension (0: none)
    dense_order: int = 0
    #: no Runge–Kutta stage-weight polynomial (:mod:`deqcore.ode.solution` reads this for explicit methods);
    #: a step's continuous extension travels in its record instead (:class:`deqcore.ode.rosenbrock.RosenbrockDense`)
    interp = None

    @property
    def stages(self) -> int:
        return self.c.size

    def standard(self):
        """``(alpha, Gamma, b, b_hat)`` of the classical form k_i = h f(y + Σ α_ij k_j) + hJ Σ γ_ij k_j."""
        s = self.stages
        Gamma = np.linalg.inv(np.diag(np.full(s, 1.0 / self.gamma)) - self.C)
        return self.a @ Gamma, Gamma, self.m @ Gamma, (self.m - self.e) @ Gamma

    def dense_weights(self, theta: float) -> np.ndarray:
        """Weights m(θ) ``(s,)`` of the increments in the continuous extension: y(t + θh) ≈ y + Σ m_i(θ) u_i."""
        theta = float(theta)
        poly = sum(theta ** q * row for q, row in enumerate(self.dense))
        return theta * self.m + theta * (1.0 - theta) * poly

    def reuses_f0(self, i: int) -> bool:
        """Whether stage ``i`` evaluates f at the step's start point (then f(t, y) is reused)."""
        return not np.any(self.a[i, :i]) and self.c[i] == 0.0


def _stiffly_accurate(name, gamma, a_rows, C_rows, c, d, order, embedded_order, dense_rows=None, dense_order=0):
    """Build a tableau whose last ``k`` rows of ``a`` extend the previous one by the previous increment
    (a_{i} = a_{i−1} + e_{i−1}), with m = a_s + e_s and the last increment as the error estimate; the rows of
    H given (``dense_rows``) are padded with zeros to s columns."""
    s = len(c)
    a = np.zeros((s, s))
    for i, row in enumerate(a_rows, start=1):
        a[i, :len(row)] = row
    for i in range(len(a_rows) + 1, s):
        a[i] = a[i - 1]
        a[i, i - 1] = 1.0
    C = np.zeros((s, s))
    for i, row in enumerate(C_rows, start=1):
        C[i, :len(row)] = row
    e = np.zeros(s)
    e[-1] = 1.0
    m = a[-1] + e
    dense = None
    if dense_rows is not None:
        dense = np.zeros((len(dense_rows), s))
        for q, row in enumerate(dense_rows):
            dense[q, :len(row)] = row
    return RosenbrockTableau(name, float(gamma), a, C, np.asarray(c, float), np.asarray(d, float), m, e,
                             order, embedded_order, dense, dense_order)


RODAS3 = _stiffly_accurate(
    "Rodas3", 0.5,
    a_rows=[[0.0], [2.0, 0.0]],
    C_rows=[[4.0], [1.0, -1.0], [1.0, -1.0, -8.0 / 3.0]],
    c=[0.0, 0.0, 1.0, 1.0], d=[0.5, 1.5, 0.0, 0.0], order=3, embedded_order=2)

RODAS4 = _stiffly_accurate(
    "Rodas4", 0.25,
    a_rows=[[1.544],
            [0.9466785280815826, 0.2557011698983284],
            [3.314825187068521, 2.896124015972201, 0.9986419139977817],
            [1.221224509226641, 6.019134481288629, 12.53708332932087, -0.6878860361058950]],
    C_rows=[[-5.6688],
            [-2.430093356833875, -0.2063599157091915],
            [-0.1073529058151375, -9.594562251023355, -20.47028614809616],
            [7.496443313967647, -10.24680431464352, -33.99990352819905, 11.70890893206160],
            [8.083246795921522, -7.981132988064893, -31.52159432874371, 16.31930543123136,
             -6.058818238834054]],
    c=[0.0, 0.386, 0.21, 0.63, 1.0, 1.0],
    d=[0.25, -0.1043, 0.1035, -0.0362, 0.0, 0.0], order=4, embedded_order=3,
    # the last increment (the error estimate) does not enter the dense output
    dense_rows=[[10.12623508344586, -7.487995877610167, -34.80091861555747, -7.992771707568823,
                 1.025137723295662],
                [-0.6762803392801253, 6.087714651680015, 16.43084320892478, 24.76722511418386,
                 -6.594389125716872]],
    dense_order=3)

RODAS5P = _stiffly_accurate(
    "Rodas5P", 0.21193756319429014,
    a_rows=[[3.0],
            [2.849394379747939, 0.45842242204463923],
            [-6.954028509809101, 2.489845061869568, -10.358996098473584],
            [2.8029986275628964, 0.5072464736228206, -0.3988312541770524, -0.04721187230404641],
            [-7.502846399306121, 2.561846144803919, -11.627539656261098, -0.18268767659942256,
             0.030198172008377946]],
    C_rows=[[-14.155112264123755],
            [-17.97296035885952, -2.859693295451294],
            [147.12150275711716, -1.41221402718213, 71.68940251302358],
            [165.43517024871676, -0.4592823456491126, 42.90938336958603, -5.961986721573306],
            [24.854864614690072, -3.0009227002832186, 47.4931110020768, 5.5814197821558125,
             -0.6610691825249471],
            [30.91273214028599, -3.1208243349937974, 77.79954646070892, 34.28646028294783,
             -19.097331116725623, -28.087943162872662],
            [37.80277123390563, -3.2571969029072276, 112.26918849496327, 66.9347231244047,
             -40.06618937091002, -54.66780262877968, -9.48861652309627]],
    c=[0.0, 0.6358126895828704, 0.4095798393397535, 0.9769306725060716, 0.4288403609558664, 1.0, 1.0, 1.0],
    d=[0.21193756319429014, -0.42387512638858027, -0.3384627126235924, 1.8046452872882734,
       2.325825639765069, 0.0, 0.0, 0.0],
    order=5, embedded_order=4,
    dense_rows=[[25.948786856663858, -2.5579724845846235, 10.433815404888879, -2.3679251022685204,
                 0.524948541321073, 1.1241088310450404, 0.4272876194431874, -0.17202221070155493],
                [-9.91568850695171, -0.9689944594115154, 3.0438037242978453, -24.495224566215796,
                 20.176138334709044, 15.98066361424651, -6.789040303419874, -6.710236069923372],
                [11.419903575922262, 2.8879645146136994, 72.92137995996029, 80.12511834622643,
                 -52.072871366152654, -59.78993625266729, -0.15582684282751913, 4.883087185713722]],
    dense_order=4)
