"""The reference ``v^T dw*/dlam`` that :func:`~ziggurat.verify` measures every method against.

A dense solve for small problems, a long conjugate-gradient solve otherwise. Either way the
residual it achieved is measured with one more product and checked, so that no report is ever
computed against a reference that did not converge.
"""

from __future__ import annotations

import math

import torch

from .. import _checks, _tree
from .._products import Linearization
from .._types import InnerLoss, Params
from ..hypergradient import Curvature, DoubleBackward, Method, cg, exact


def reference_vjp(
    inner: InnerLoss,
    w: Params,
    lam: Params,
    v: Params,
    *,
    dtype: torch.dtype | None = torch.float64,
    dense_limit: int = 3000,
    damping: float = 0.0,
    curvature: Curvature | None = None,
) -> tuple[Params, str]:
    """Reference ``v^T dw*/dlam``: dense solve up to ``dense_limit`` unknowns, else CG.

    The reference solves ``(H + damping I) x = v`` with ``H`` from ``curvature`` (default: the
    exact Hessian by double backward), then measures the residual ``||v - (H + damping I) x||
    / ||v||`` it achieved with one more product.

    Returns:
        The reference and a label naming the solve and its achieved residual.

    Raises:
        ValueError: when the residual is above :func:`reference_tolerance` (CG stops early on
            an indefinite Hessian), or the dense Hessian is singular; the message names the
            options that fix it.
    """
    _checks.int_at_least("verify reference_dense_limit", dense_limit, 0)
    _checks.non_negative("verify reference_damping", damping)
    curv: Curvature = DoubleBackward() if curvature is None else curvature
    cast = (lambda p: _tree.cast(p, dtype)) if dtype is not None else _tree.detach
    w64, lam64, v64 = cast(w), cast(lam), cast(v)
    n = _tree.numel(w)
    dense = n <= dense_limit
    method: Method = (
        exact(damping=damping, curvature=curv)
        if dense
        else cg(maxiter=max(1000, 2 * n), tol=1e-12, damping=damping, curvature=curv)
    )
    try:
        result = method(inner, w64, lam64, v64)
    except RuntimeError as err:
        raise RuntimeError(
            f"verify: the inner loss failed in {dtype} ({err}); make it dtype-generic "
            "(cast data to the parameters' dtype) or pass reference_dtype=None"
        ) from err
    except ValueError as err:
        if isinstance(err.__cause__, torch.linalg.LinAlgError):
            raise ValueError(
                f"verify: the reference Hessian is singular on {n} unknowns ({err.__cause__}); "
                "pass reference_damping > 0 to verify (the reference then solves "
                "(H + damping I) x = v; give the compared methods the same damping), or remove "
                "parameters the loss does not depend on"
            ) from err
        raise
    solution = result.info.solution
    assert solution is not None  # Implicit always reports its solution
    residual = _achieved_residual(inner, w64, lam64, v64, solution, damping, curv)
    solve = "dense solve" if dense else f"CG to 1e-12 ({result.info.iterations} iterations)"
    _check_reference(residual, reference_tolerance(v64), dense, solve, n, dense_limit)
    return result.vjp, f"{solve} in {dtype or 'input dtype'}, residual {residual:.1e}"


def reference_tolerance(v: Params) -> float:
    """Largest relative residual accepted of the reference: ``1e-8``, or ``sqrt(eps)`` of
    ``v``'s dtype when that is larger (a float32 reference cannot reach ``1e-8``)."""
    eps = max(torch.finfo(t.dtype).eps for t in v.values())
    return max(1e-8, math.sqrt(eps))


def _achieved_residual(
    inner: InnerLoss,
    w: Params,
    lam: Params,
    v: Params,
    x: Params,
    damping: float,
    curvature: Curvature,
) -> float:
    """``||v - (H + damping I) x|| / ||v||`` measured with one product (no recurrence)."""
    v_norm = float(_tree.norm(v))
    if v_norm == 0.0:
        return 0.0
    hx = curvature.matvec(Linearization(inner, w, lam))(_tree.detach(x))
    r = _tree.sub(v, _tree.axpy(damping, x, hx))
    return float(_tree.norm(_tree.detach(r))) / v_norm


def _check_reference(
    residual: float, tol: float, dense: bool, solve: str, n: int, dense_limit: int
) -> None:
    if residual <= tol:
        return
    if dense:
        fix = (
            "the Hessian is ill-conditioned: pass reference_damping > 0 to verify (the "
            "reference then solves (H + damping I) x = v; give the compared methods the same "
            "damping)"
        )
    else:
        fix = (
            "CG stops early when the Hessian is not positive definite. Pass "
            f"reference_dense_limit >= {n} to verify (now {dense_limit}) so a dense solve is "
            "used (n products, O(n^3) time), or reference_damping > 0 (the reference then "
            "solves (H + damping I) x = v; give the compared methods the same damping), or a "
            "positive semi-definite reference_curvature such as GaussNewton(...)"
        )
    raise ValueError(
        f"verify: the reference did not converge: relative residual {residual:.2e} after "
        f"{solve} on {n} unknowns, above {tol:.0e}; {fix}"
    )
