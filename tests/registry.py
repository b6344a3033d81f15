"""One registry of hypergradient methods; every hypergradient test runs over all of it.

Each case says how to build the method for a problem and what the method must compute on a
problem whose inner loss is quadratic in ``w``: ``-M^T S(H) v``, where ``H`` is the Hessian,
``M`` the mixed matrix (``(d^2 f/dlam dw) u = M^T u``) and ``S`` the method's stand-in for
``H^{-1}``. ``exact`` cases have ``S = H^{-1}`` (to 1e-8 relative in float64); the others are
checked against their own model and have their error against the truth measured.

Each case also states its error model as a tolerance: ``TOL_EXACT = 1e-8`` relative for methods
that are exact in exact arithmetic, and a documented floor for those that take products by
finite differences, whose rounding error a solver amplifies (``benchmarks/RESULTS_fd.md``).

Gauss-Newton cases need the problem's model: its loss written as ``l(g(w, lam)) + r(w, lam)``
(``Spec.gauss_newton``, built from the model's outputs and loss, never from ``H``). They run
only on problems that have one, where the curvature ``J^T (d^2 l) J + d^2 r`` equals ``H`` by
the theory (a linear model and a convex loss), so they are exact.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ziggurat.analytic import LogisticHPO, RidgeHPO
from ziggurat.hypergradient import (
    FiniteDifference,
    ForwardOverReverse,
    GaussNewton,
    HopContext,
    Method,
    MixedFiniteDifference,
    cg,
    darts,
    exact,
    first_order,
    fixed_point,
    fixed_point_of,
    gauss_newton,
    neumann,
    penalty,
    penalty_of,
    sama,
    unrolled,
)
from ziggurat.linalg import heavy_ball_rate, polyak_parameters
from ziggurat.optim import sgd


@dataclass(frozen=True)
class Spec:
    """What a case needs to know about the hop it runs on."""

    H: Tensor  # Hessian of the inner loss in w
    M: Tensor  # mixed matrix, (d^2 f/dlam dw) u = M^T u
    gauss_newton: GaussNewton | None = None  # from the problem's model, if it has one

    def model_curvature(self) -> GaussNewton:
        assert self.gauss_newton is not None, "a Gauss-Newton case needs the problem's model"
        return self.gauss_newton

    @property
    def n(self) -> int:
        return self.H.shape[0]

    @property
    def lmax(self) -> float:
        return float(torch.linalg.eigvalsh(self.H).max())

    @property
    def lmin(self) -> float:
        return float(torch.linalg.eigvalsh(self.H).min())

    @property
    def long(self) -> int:
        """Steps of rate ``1 - mu/L`` that shrink the error below 1e-12."""
        return steps_below(1 - self.lmin / self.lmax, 1e-12)

    @property
    def polyak(self) -> tuple[float, float]:
        """Polyak's heavy-ball (step, momentum) for this Hessian's spectrum."""
        return polyak_parameters(self.lmin, self.lmax)

    def long_heavy_ball(self, step: float, momentum: float) -> int:
        """Heavy-ball steps that shrink the error below 1e-12, with room for the polynomial
        factor of a double root."""
        return 4 * steps_below(heavy_ball_rate(step, momentum, self.lmin, self.lmax), 1e-12)


def steps_below(rate: float, eps: float) -> int:
    return math.ceil(math.log(eps) / math.log(rate))


def krylov_solution(H: Tensor, v: Tensor, k: int) -> Tensor:
    """CG's k-th iterate, characterised independently: the minimiser of the H-norm error over
    the Krylov space span{v, Hv, ..., H^{k-1} v} (Hestenes & Stiefel 1952)."""
    cols = [v]
    for _ in range(k - 1):
        cols.append(H @ cols[-1])
    V, _ = torch.linalg.qr(torch.stack(cols, 1))
    return V @ torch.linalg.solve(V.T @ H @ V, V.T @ v)


def ridge_gauss_newton(ridge: RidgeHPO) -> GaussNewton:
    """Ridge regression's model: the linear outputs ``X w``, the convex loss
    ``1/2 ||out - y||^2`` and the penalty ``1/2 sum lam w^2`` (whose Hessian is added exactly)."""
    return gauss_newton(
        lambda w, lam: ridge.X @ w["w"],
        lambda out: 0.5 * (out - ridge.y).pow(2).sum(),
        regularizer=lambda w, lam: 0.5 * (lam["lam"] * w["w"] ** 2).sum(),
    )


def logistic_gauss_newton(problem: LogisticHPO) -> GaussNewton:
    """Logistic regression's model: the linear logits ``X w + b``, the convex mean binary
    cross-entropy and the penalty ``1/2 sum exp(lam) w^2``. Unlike ridge, the loss Hessian
    ``diag(p (1 - p)) / n`` depends on ``w``."""
    return gauss_newton(
        lambda w, lam: problem.X @ w["w"] + w["b"],
        lambda out: torch.nn.functional.binary_cross_entropy_with_logits(out, problem.y),
        regularizer=lambda w, lam: 0.5 * (lam["lam"].exp() * w["w"] ** 2).sum(),
    )


def neumann_model(H: Tensor, v: Tensor, K: int, alpha: float) -> Tensor:
    eye = torch.eye(H.shape[0], dtype=H.dtype)
    term, total = v, v
    for _ in range(K):
        term = (eye - alpha * H) @ term
        total = total + term
    return alpha * total


def unrolled_model(H: Tensor, v: Tensor, T: int, lr: float) -> Tensor:
    """SGD from the optimum of a quadratic: ``dw_T/dlam^T v = -M^T (I-(I-lr H)^T) H^{-1} v``."""
    eye = torch.eye(H.shape[0], dtype=H.dtype)
    return (eye - torch.linalg.matrix_power(eye - lr * H, T)) @ torch.linalg.solve(H, v)


def heavy_ball_model(H: Tensor, v: Tensor, K: int, step: float, momentum: float) -> Tensor:
    """``K`` steps of the transposed linearised heavy-ball map, on the joint state (independent
    of the solver's recurrence): ``A = [[I - step H, -step mu I], [H, mu I]]``,
    ``p <- A^T p + (v, 0)`` from zero; the answer is ``x = step p_w - p_m``."""
    n = H.shape[0]
    eye = torch.eye(n, dtype=H.dtype)
    A = torch.cat(
        [
            torch.cat([eye - step * H, -step * momentum * eye], 1),
            torch.cat([H, momentum * eye], 1),
        ]
    )
    c = torch.cat([v, torch.zeros_like(v)])
    p = torch.zeros_like(c)
    for _ in range(K):
        p = A.T @ p + c
    return step * p[:n] - p[n:]


def _polyak_fixed_point(s: Spec, iterations: int | None = None) -> Method:
    step, mu = s.polyak
    k = s.long_heavy_ball(step, mu) if iterations is None else iterations
    return fixed_point(k, step, momentum=mu, tol=1e-13 if iterations is None else None)


def _momentum_sgd(s: Spec) -> Method:
    opt = sgd(1.0 / s.lmax, momentum=0.9)
    return fixed_point_of(opt, s.long_heavy_ball(1.0 / s.lmax, 0.9), tol=1e-13)


TOL_EXACT = 1e-8
"""Relative error of a method exact in exact arithmetic, in float64."""

TOL_FD = 1e-9
"""Central-difference products (``FiniteDifference`` curvature, ``MixedFiniteDifference``) in
float64. On these problems ``grad_w f`` is linear in ``w`` and ``grad_lam f`` at most quadratic,
so a central difference has no truncation error and only rounding remains: about
``eps^(2/3) = 4e-11`` relative per product, which a solve can amplify by up to the condition
number of ``H`` (at most 37 here). Measured at most 9.4e-11 over the quadratic, ridge and
three-level problems (cg_fd on the quadratic)."""

TOL_PENALTY = 1e-6
"""The penalty method with its default ``eps`` in float64, against its model (``fixed_point``'s
iterates on a quadratic). Its difference is one-sided, so its default displacement is
``sqrt(eps_mach) max(1, ||w||)`` rather than ``eps_mach^(1/3)``: rounding of order
``sqrt(eps_mach) = 1.5e-8`` relative, times up to the condition number, plus on ridge an
``O(eps)`` truncation of the same order (``grad_lam f = w^2 / 2`` is not linear in ``w``).
Measured at most 1.8e-7 (ridge)."""


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[Spec], Method]
    apply_s: Callable[[Spec, Tensor], Tensor]  # S(H) v
    exact: bool
    context: Callable[[Spec, str], HopContext] = lambda spec, key: HopContext()
    needs_model: bool = False  # Gauss-Newton: runs only where Spec.gauss_newton is given
    tol: float = TOL_EXACT  # relative error allowed against the model (and, if exact, the truth)


FD = {"curvature": FiniteDifference(), "mixed": MixedFiniteDifference()}
"""The first-order-only products: both by central differences of ordinary gradients."""


def _solve(s: Spec, v: Tensor) -> Tensor:
    return torch.linalg.solve(s.H, v)


def _warm(s: Spec, key: str) -> HopContext:
    return HopContext(warm_start={key: torch.zeros(s.n, dtype=s.H.dtype)})


def _polyak_penalty(s: Spec, steps: int) -> Method:
    step, mu = s.polyak
    return penalty(steps, step, momentum=mu)


def _precond(spec: Spec) -> Tensor:
    return torch.linspace(0.5, 1.5, spec.n, dtype=spec.H.dtype)


CASES: list[Case] = [
    Case("exact", lambda s: exact(), lambda s, v: torch.linalg.solve(s.H, v), True),
    Case(
        "exact_fwd",
        lambda s: exact(curvature=ForwardOverReverse()),
        lambda s, v: torch.linalg.solve(s.H, v),
        True,
    ),
    Case("cg_n", lambda s: cg(s.n, 1e-300), lambda s, v: torch.linalg.solve(s.H, v), True),
    Case("cg_tol", lambda s: cg(10 * s.n, 1e-13), lambda s, v: torch.linalg.solve(s.H, v), True),
    Case(
        "cg_fwd",
        lambda s: cg(s.n, 1e-300, curvature=ForwardOverReverse()),
        lambda s, v: torch.linalg.solve(s.H, v),
        True,
    ),
    Case(
        "cg_warm",
        lambda s: cg(s.n, 1e-300, warm_start=True),
        lambda s, v: torch.linalg.solve(s.H, v),
        True,
        lambda s, key: HopContext(warm_start={key: torch.zeros(s.n, dtype=s.H.dtype)}),
    ),
    Case("cg_3", lambda s: cg(3, 1e-300), lambda s, v: krylov_solution(s.H, v, 3), False),
    Case(
        "neumann_long",
        lambda s: neumann(s.long, 1.0 / s.lmax),
        lambda s, v: torch.linalg.solve(s.H, v),
        True,
    ),
    Case(
        "neumann_5",
        lambda s: neumann(5, 1.0 / s.lmax),
        lambda s, v: neumann_model(s.H, v, 5, 1.0 / s.lmax),
        False,
    ),
    Case(
        "fixed_point_long",
        lambda s: fixed_point(s.long, 1.0 / s.lmax, tol=1e-13),
        lambda s, v: torch.linalg.solve(s.H, v),
        True,
    ),
    Case(
        "fixed_point_warm",
        lambda s: fixed_point(s.long, 1.0 / s.lmax, tol=1e-13),
        lambda s, v: torch.linalg.solve(s.H, v),
        True,
        lambda s, key: HopContext(warm_start={key: torch.zeros(s.n, dtype=s.H.dtype)}),
    ),
    Case(
        "fixed_point_5",
        lambda s: fixed_point(5, 1.0 / s.lmax),
        lambda s, v: neumann_model(s.H, v, 4, 1.0 / s.lmax),
        False,
    ),
    Case(
        "fixed_point_momentum_long",
        _polyak_fixed_point,
        lambda s, v: torch.linalg.solve(s.H, v),
        True,
    ),
    Case(
        "fixed_point_momentum_5",
        lambda s: _polyak_fixed_point(s, 5),
        lambda s, v: heavy_ball_model(s.H, v, 5, *s.polyak),
        False,
    ),
    Case(
        "fixed_point_of_momentum_sgd",
        _momentum_sgd,
        lambda s, v: torch.linalg.solve(s.H, v),
        True,
    ),
    Case(
        "exact_gauss_newton",
        lambda s: exact(curvature=s.model_curvature()),
        lambda s, v: torch.linalg.solve(s.H, v),
        True,
        needs_model=True,
    ),
    Case(
        "cg_gauss_newton",
        lambda s: cg(s.n, 1e-300, curvature=s.model_curvature()),
        lambda s, v: torch.linalg.solve(s.H, v),
        True,
        needs_model=True,
    ),
    Case(
        "fixed_point_gauss_newton",
        lambda s: fixed_point(s.long, 1.0 / s.lmax, tol=1e-13, curvature=s.model_curvature()),
        lambda s, v: torch.linalg.solve(s.H, v),
        True,
        needs_model=True,
    ),
    Case(
        "unrolled_long",
        lambda s: unrolled(sgd(1.0 / s.lmax), s.long),
        lambda s, v: torch.linalg.solve(s.H, v),
        True,
    ),
    Case(
        "unrolled_20",
        lambda s: unrolled(sgd(1.0 / s.lmax), 20),
        lambda s, v: unrolled_model(s.H, v, 20, 1.0 / s.lmax),
        False,
    ),
    Case(
        "unrolled_trunc",
        lambda s: unrolled(sgd(1.0 / s.lmax), 40, truncate=20),
        lambda s, v: unrolled_model(s.H, v, 20, 1.0 / s.lmax),
        False,
    ),
    Case("darts", lambda s: darts(), lambda s, v: v, False),
    Case("darts_radius", lambda s: darts(radius=0.01), lambda s, v: v, False),
    Case("sama", lambda s: sama(), lambda s, v: v, False),
    Case(
        "sama_adam",
        lambda s: sama(),
        lambda s, v: _precond(s) * v,
        False,
        lambda s, key: HopContext(preconditioner={key: _precond(s)}),
    ),
    Case("first_order", lambda s: first_order(), lambda s, v: torch.zeros_like(v), False),
    # products from ordinary gradients only (first_order_only): every solver
    Case("exact_fd", lambda s: exact(**FD), _solve, True, tol=TOL_FD),
    Case(
        "exact_fd_curvature",
        lambda s: exact(curvature=FiniteDifference()),
        _solve,
        True,
        tol=TOL_FD,
    ),
    Case("cg_fd", lambda s: cg(10 * s.n, 1e-13, **FD), _solve, True, tol=TOL_FD),
    Case(
        "cg_fd_3",
        lambda s: cg(3, 1e-300, **FD),
        lambda s, v: krylov_solution(s.H, v, 3),
        False,
        tol=TOL_FD,
    ),
    Case(
        "neumann_fd_long", lambda s: neumann(s.long, 1.0 / s.lmax, **FD), _solve, True, tol=TOL_FD
    ),
    Case(
        "neumann_fd_5",
        lambda s: neumann(5, 1.0 / s.lmax, **FD),
        lambda s, v: neumann_model(s.H, v, 5, 1.0 / s.lmax),
        False,
        tol=TOL_FD,
    ),
    Case(
        "fixed_point_fd_long",
        lambda s: fixed_point(s.long, 1.0 / s.lmax, tol=1e-13, **FD),
        _solve,
        True,
        tol=TOL_FD,
    ),
    Case(
        "fixed_point_fd_momentum_5",
        lambda s: fixed_point(5, s.polyak[0], momentum=s.polyak[1], **FD),
        lambda s, v: heavy_ball_model(s.H, v, 5, *s.polyak),
        False,
        tol=TOL_FD,
    ),
    # the penalty method (F2SA / BOME): fixed_point's iterates on a quadratic
    Case("penalty_long", lambda s: penalty(s.long, 1.0 / s.lmax), _solve, True, tol=TOL_PENALTY),
    Case(
        "penalty_warm",
        lambda s: penalty(s.long, 1.0 / s.lmax, warm_start=True),
        _solve,
        True,
        _warm,
        tol=TOL_PENALTY,
    ),
    Case(
        "penalty_5",
        lambda s: penalty(5, 1.0 / s.lmax),
        lambda s, v: neumann_model(s.H, v, 4, 1.0 / s.lmax),
        False,
        tol=TOL_PENALTY,
    ),
    Case(
        "penalty_momentum_5",
        lambda s: _polyak_penalty(s, 5),
        lambda s, v: heavy_ball_model(s.H, v, 5, *s.polyak),
        False,
        tol=TOL_PENALTY,
    ),
    Case(
        "penalty_of_momentum_sgd",
        lambda s: penalty_of(sgd(1.0 / s.lmax, momentum=0.9), s.long_heavy_ball(1.0 / s.lmax, 0.9)),
        _solve,
        True,
        tol=TOL_PENALTY,
    ),
]

EXACT = [c for c in CASES if c.exact]
IDS = [c.name for c in CASES]
MODEL_FREE = [c for c in CASES if not c.needs_model]  # for problems given only by H and M
MODEL_FREE_IDS = [c.name for c in MODEL_FREE]
GAUSS_NEWTON = [c for c in CASES if c.needs_model]
