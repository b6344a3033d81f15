"""A method that chooses itself: measured error against a reference, at the lowest cost.

``Auto(target=1e-2)`` is a :class:`Method` like any other, so it composes along any path. At
its first call on a hop, every ``interval`` calls after that, and when the residual of the
method it chose drifts, it *measures* on the hop's own problem ``(inner, w, lam, v)``:

1. **what can run there.** Second-order products are tried once (the first Hessian-vector
   product, which the reference needs anyway); an operation without a double backward
   (:class:`~ziggurat._second_order.DoubleBackwardError`) or a caller that says second-order
   autograd cannot run (``HopContext.first_order_only``: an FSDP2-sharded level) leaves the
   candidates that need only gradients: conjugate gradient on finite-difference products,
   DARTS, SAMA and first-order.
2. **a reference.** Conjugate gradient from zero on ``H x = v`` until its relative residual is
   ``max(target / 1000, 100 eps)`` or ``max_iterations`` products. The gradient graph is built
   once and every product reuses it (:class:`~ziggurat._products.Linearization`).
3. **every candidate's error,** ``||g - g_ref|| / ||g_ref||`` on the hop's output, with no
   extra solve: ``cg(k)`` for ``k`` on a grid is the reference run's own ``k``-th iterate (one
   mixed product each); DARTS and SAMA are evaluated once (2 gradients each). Neumann and fixed
   point are not candidates: with the same ``k`` products on a positive definite ``H``, their
   iterate lies in the Krylov space over which CG's iterate minimises the error in ``H``'s norm
   (Hestenes & Stiefel 1952; Saad 2003, ch. 6), so they do not beat ``cg(k)``.
4. **its cost,** in gradient evaluations ``G`` by a declared :class:`CostModel` (counted
   products, not timings, so that a decision is reproducible), and an estimate of its memory:
   the bytes autograd saves for the graphs it builds (measured with saved-tensor hooks) plus
   the vectors it keeps.

It then picks the cheapest candidate whose measured error is within ``safety * target`` and,
when none is, the most accurate one, and says so. The call that measures returns the
reference's answer (the most accurate it has); the calls until the next measurement run the
chosen method. The decision, with every alternative's numbers, is in ``HopInfo.decision``; its
state (the choice, the count since the last measurement) is ``HopInfo.state``, which callers
keep per hop and save in checkpoints, so a resumed run decides exactly as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .. import _checks, _tree, linalg
from .._products import Linearization, mixed_vjp_fd
from .._second_order import DoubleBackwardError
from .._types import InnerLoss, MatVec, Params
from ._base import NO_CONTEXT, HopContext, HopInfo, HopResult, Method, check_inputs
from ._finite_difference import FiniteDifference
from ._first_order import FirstOrder
from ._implicit import DoubleBackward, Implicit, MixedAutograd, MixedFiniteDifference
from ._sama import Sama
from ._strategies import Curvature, MixedRule


def _grid(top: int = 2000) -> tuple[int, ...]:
    points, k = list(range(1, 31)), 30
    while k < top:
        k = max(k + 1, round(k * 1.1))
        points.append(k)
    return tuple(points)


GRID = _grid()
"""The iteration counts of ``cg(k)`` whose error a measurement records: every count up to 30,
then points 1.1x apart, so that the chosen ``k`` costs little more than the smallest ``k``
within the target. Each recorded point costs one mixed product and keeps one vector shaped
like the upper parameters until the reference is known."""

CANDIDATES = ("first_order", "darts", "sama", "cg", "minres")
"""The methods ``auto`` may choose from, by name (``minres`` is measured where conjugate
gradient breaks down on an indefinite Hessian, with ``Auto(indefinite="minres")``)."""


@dataclass(frozen=True)
class CostModel:
    """The cost of the operations of a hop in units of one gradient evaluation (``G``).

    Measured on MLPs of 10k and 100k parameters (CPU, float32): building the gradient graph for
    double backward with its first product costs 2.3-2.9 G, each later Hessian-vector product
    1.1-1.6 G and each mixed product about 0.6 G. A product by central differences is two
    gradients.

    Attributes:
        graph: building the gradient graph that second-order products reuse.
        product: one Hessian-vector or mixed product through that graph.
        gradient: one gradient evaluation (a finite-difference product costs two).
    """

    graph: float = 1.5
    product: float = 1.5
    gradient: float = 1.0

    def cg(self, k: int, second_order: bool) -> float:
        if second_order:
            return self.graph + (k + 1) * self.product
        return 2 * (k + 1) * self.gradient


@dataclass(frozen=True)
class Candidate:
    """One method a measurement considered.

    Attributes:
        label: how logs name it (``cg(6)``, ``cg_fd(6)``, ``darts``).
        kind: the preset (``cg``, ``darts``, ``sama``, ``first_order``).
        settings: its options (``{"maxiter": 6}``).
        error: its measured relative error against the reference (``nan`` when excluded).
        cost: its cost in ``G`` (:class:`CostModel`).
        counts: the same cost as operations (``6 H + 1 M + graph``).
        memory: estimated bytes it needs beyond the parameters.
        excluded: why it cannot be chosen here (empty when it can).
        residual: the relative residual of its solve (``nan`` without one).
    """

    label: str
    kind: str
    settings: dict[str, Any]
    error: float
    cost: float
    counts: str
    memory: float
    excluded: str = ""
    residual: float = math.nan


@dataclass(frozen=True)
class Decision:
    """What one measurement found and chose.

    Attributes:
        target: the relative error asked for.
        chosen: the candidate that runs until the next measurement.
        candidates: every candidate with its numbers.
        reference: how the reference was computed.
        converged: whether the reference reached its tolerance (if not, the errors are
            measured against an approximation and may understate the true errors).
        within_target: whether the chosen candidate's error is within the target.
        products: ``"autograd"`` or ``"finite_difference"``: how the candidates take
            products, and ``why_first_order`` says why when it is the second.
        why_first_order: the reason second-order products are not used, or ``""``.
        measurement_cost: what the measurement spent, in ``G``.
        trigger: why it measured (first call, interval, residual drift).
    """

    target: float
    chosen: Candidate
    candidates: tuple[Candidate, ...]
    reference: str
    converged: bool
    within_target: bool
    products: str
    why_first_order: str
    measurement_cost: float
    trigger: str

    def summary(self) -> str:
        """One line: the choice, its error and cost, and against what."""
        c = self.chosen
        verdict = "within" if self.within_target else "NOT within"
        line = (
            f"auto chose {c.label}: error {c.error:.2e} {verdict} target {self.target:.0e}, "
            f"cost {c.cost:.1f} G ({c.counts}); reference {self.reference}"
        )
        if not self.converged:
            line += "; the reference did not converge, so these errors may understate the truth"
        if self.why_first_order:
            line += f"; gradients only: {self.why_first_order}"
        return line + f" [{self.trigger}; measuring cost {self.measurement_cost:.1f} G]"

    def table(self) -> str:
        """The summary and one row per candidate, as ``ziggurat check`` prints them."""
        rows = [self.summary(), f"{'candidate':<14}{'rel error':>11}{'cost G':>9}{'memory MB':>11}"]
        for c in self.candidates:
            mark = "*" if c is self.chosen else " "
            error = "-" if math.isnan(c.error) else f"{c.error:.2e}"
            note = f"  {c.counts}" + (f"  ({c.excluded})" if c.excluded else "")
            rows.append(
                f"{mark}{c.label:<13}{error:>11}{c.cost:>9.1f}{c.memory / 2**20:>11.2f}{note}"
            )
        return "\n".join(rows)

    def scalars(self) -> dict[str, float]:
        """Numbers for metric backends: the choice's, and every candidate's error and cost."""
        out = {
            "chosen_error": self.chosen.error,
            "chosen_cost": self.chosen.cost,
            "target": self.target,
            "within_target": float(self.within_target),
            "reference_converged": float(self.converged),
            "measurement_cost": self.measurement_cost,
        }
        for c in self.candidates:
            if not c.excluded:
                out[f"{c.label}_error"] = c.error
                out[f"{c.label}_cost"] = c.cost
        return out

    def __str__(self) -> str:
        return self.table()


# ------------------------------------------------------------------------------- measurement


class _SavedBytes:
    """Bytes autograd saves for backward while active (each storage counted once)."""

    def __init__(self) -> None:
        self.total = 0
        self._seen: set[tuple[int, int]] = set()

    def pack(self, t: Tensor) -> Tensor:
        try:
            key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        except (RuntimeError, NotImplementedError):  # a tensor without storage (a wrapper)
            key = (id(t), t.numel() * t.element_size())
        if key not in self._seen:
            self._seen.add(key)
            self.total += key[1]
        return t

    def hooks(self) -> Any:
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)


@dataclass
class _Run:
    """One solver run from zero and the products ``M x_k`` recorded at the grid's ``k``."""

    solver: str
    points: dict[int, tuple[Params, float]] = field(default_factory=dict)  # k -> (M x_k, res)
    products: int = 0
    residual: float = math.nan
    converged: bool = False
    stop: str = ""
    negative_curvature: bool = False  # CG met a direction of non-positive curvature
    truncated: bool = False  # ... and its last iterate before it is the reference

    @property
    def answer(self) -> Params:
        return self.points[max(self.points)][0]


def _cg_iterates(op: MatVec, b: Params, maxiter: int, run: _Run) -> Iterator[tuple[int, Params]]:
    """Conjugate gradient from zero; stops (saying why in ``run.stop``) at the first direction
    of non-positive curvature. Sets ``run.residual`` for each iterate."""
    x, r = _tree.zeros_like(b), b
    p = r
    rr = float(_tree.dot(r, r))
    b_norm = math.sqrt(rr)
    for k in range(1, maxiter + 1):
        hp = op(p)
        curvature = float(_tree.dot(p, hp))
        if not curvature > 0.0:
            run.stop = f"non-positive curvature at product {k} (H is not positive definite)"
            run.negative_curvature = True
            run.products = k
            return
        step = rr / curvature
        x = _tree.axpy(step, p, x)
        r = _tree.axpy(-step, hp, r)
        rr_new = float(_tree.dot(r, r))
        p = _tree.axpy(rr_new / rr, p, r)
        rr = rr_new
        run.residual = math.sqrt(rr) / b_norm
        yield k, x


def _minres_iterates(
    op: MatVec, b: Params, maxiter: int, run: _Run
) -> Iterator[tuple[int, Params]]:
    for k, x, residual in linalg.minres(maxiter, None).iterates(op, b):
        run.residual = float(residual)
        yield k, x


def _record(
    run: _Run,
    iterates: Iterator[tuple[int, Params]],
    mixed: Callable[[Params], Params],
    tol: float,
    zeros: Callable[[], Params],
) -> _Run:
    """Drive a solver's iterates, keeping ``M x_k`` at the grid's ``k``, at convergence and at
    the last iterate."""
    last: tuple[int, Params, float] | None = None
    for k, x in iterates:
        run.products = k
        if not math.isfinite(run.residual):
            run.stop = f"the residual is not finite at product {k}"
            break
        last = (k, x, run.residual)
        done = run.residual <= tol
        if k in GRID or done:
            run.points[k] = (mixed(x), run.residual)
        if done:
            run.converged = True
            break
    if last is not None and last[0] not in run.points:
        run.points[last[0]] = (mixed(last[1]), last[2])
    if not run.converged and not run.stop:
        run.stop = f"residual {run.residual:.1e} after {run.products} products, above {tol:.0e}"
    if not run.points:  # stopped before the first update: the solution is zero
        run.points[0] = (zeros(), 1.0)
    run.residual = run.points[max(run.points)][1]
    return run


@dataclass(frozen=True)
class _Operators:
    """The products of one measurement: ``H u``, the averaged mixed product ``M x``, the
    average over data-parallel ranks, whether they are second-order, why not, and the bytes
    the double-backward graph saved."""

    matvec: MatVec
    mixed: Callable[[Params], Params]
    average: Callable[[Params], Params]
    second: bool
    why: str
    graph_bytes: _SavedBytes


def _describe(runs: list[_Run], tol: float) -> str:
    run = runs[-1]
    solver = "CG" if run.solver == "cg" else "MINRES"
    if run.truncated:
        out = (
            f"CG truncated at the first non-positive curvature (product {run.products}; H is "
            f"not positive definite, so H^-1 v is taken as Steihaug's truncated solution), "
            f"residual {run.residual:.1e}"
        )
    elif run.converged:
        out = f"{solver} to {tol:.0e} ({run.products} products, residual {run.residual:.1e})"
    else:
        out = f"{solver} stopped: {run.stop} (residual {run.residual:.1e})"
    if len(runs) > 1:
        out += f"; CG stopped first: {runs[0].stop}"
    return out


def _relative(got: Params, ref: Params) -> float:
    g = _tree.flatten(_tree.detach(got)).double()
    r = _tree.flatten(_tree.detach(ref)).double()
    diff, scale = float((g - r).norm()), float(r.norm())
    return diff / scale if scale > 0 else diff


def _identity_average() -> Callable[[Params], Params]:
    return lambda t: t


class _Capture(Curvature):
    """The identity operator: wrapped by a caller's curvature wrapper (data-parallel), it
    gives the wrapper's own averaging of a tree over ranks."""

    def matvec(self, lin: Linearization) -> MatVec:
        return lambda u: u


@dataclass(frozen=True)
class Auto(Method):
    """Choose the method of a hop by measuring it: see the module docstring.

    Attributes:
        target: the relative error of the hop's output asked for, in ``(0, 1)``.
        interval: calls between measurements.
        drift: re-measure when the chosen solver's residual exceeds ``drift`` times its
            residual at the decision (``None``: only every ``interval`` calls; reading the
            residual is one host synchronisation per call).
        memory_budget: bytes a candidate may need beyond the parameters (``None``: any).
        first_order: use gradients alone everywhere (``Config(curvature="finite_difference")``).
        max_iterations: products the reference may spend.
        safety: a candidate qualifies when its measured error is within ``safety * target``
            (the error moves between measurements; the margin keeps it within the target).
        candidates: the method names it may choose from (a subset of :data:`CANDIDATES`).
        costs: the cost model.
        indefinite: what the reference is where ``H`` is not positive definite (conjugate
            gradient meets a direction of non-positive curvature, as it does on a network's
            loss away from a minimum). ``"truncate"`` (default): CG's last iterate before that
            direction, the truncated Newton step of trust-region methods (Steihaug, SIAM J.
            Numer. Anal. 1983), which is also what ``cg(k)`` returns there. ``"minres"``: the
            exact ``H^{-1} v`` by MINRES, which may need many products and, on a
            nearly singular ``H``, is large.
        wrap: the curvature wrapper a data-parallel caller applied (``with_curvature``).
    """

    target: float = 1e-2
    interval: int = 100
    drift: float | None = 10.0
    memory_budget: float | None = None
    first_order: bool = False
    max_iterations: int = 100
    safety: float = 0.5
    candidates: tuple[str, ...] = CANDIDATES
    costs: CostModel = CostModel()
    indefinite: str = "truncate"
    wrap: Callable[[Curvature], Curvature] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not (isinstance(self.target, (int, float)) and 0.0 < self.target < 1.0):
            raise ValueError(f"auto target must be a relative error in (0, 1), got {self.target!r}")
        _checks.int_at_least("auto interval", self.interval, 1)
        if self.drift is not None and not (
            isinstance(self.drift, (int, float)) and self.drift > 1.0
        ):
            raise ValueError(f"auto drift must be None or a number > 1, got {self.drift!r}")
        if self.memory_budget is not None:
            _checks.positive("auto memory_budget", self.memory_budget)
        _checks.int_at_least("auto max_iterations", self.max_iterations, 1)
        if not 0.0 < self.safety <= 1.0:
            raise ValueError(f"auto safety must be in (0, 1], got {self.safety!r}")
        if self.indefinite not in ("truncate", "minres"):
            raise ValueError(
                f"auto indefinite must be 'truncate' or 'minres', got {self.indefinite!r}"
            )
        unknown = sorted(set(self.candidates) - set(CANDIDATES))
        if unknown or not self.candidates:
            raise ValueError(
                f"auto candidates must be a non-empty subset of {CANDIDATES}, got "
                f"{self.candidates!r}"
            )

    @property
    def name(self) -> str:
        return "auto"

    @property
    def stateful(self) -> bool:
        return True

    @property
    def restricts_to_first_order(self) -> bool:
        return True

    @property
    def first_order_only(self) -> bool:
        return self.first_order

    @property
    def finite_differences(self) -> bool:
        return True  # DARTS, SAMA or finite-difference products may be chosen

    @property
    def needs_preconditioner(self) -> bool:
        return "sama" in self.candidates

    def with_curvature(self, wrap: Callable[[Curvature], Curvature]) -> Auto:
        inner = self.wrap
        composed = wrap if inner is None else (lambda c: wrap(inner(c)))
        return dataclasses.replace(self, wrap=composed)

    # ---------------------------------------------------------------------------- the call

    def __call__(
        self,
        inner: InnerLoss,
        w: Params,
        lam: Params,
        v: Params,
        context: HopContext = NO_CONTEXT,
    ) -> HopResult:
        check_inputs(w, lam, v)
        state = _State.load(context.state)
        trigger = state.trigger(self.interval)
        if trigger is None:
            return self._run_choice(inner, w, lam, v, context, state)
        decision, vjp, spent = self.measure(inner, w, lam, v, context, trigger, state)
        if decision is None:  # nothing to measure against (v = 0): measure again next call
            info = HopInfo("auto", spent, 0.0, state=state.plain())
            return HopResult(vjp=vjp, info=info)
        new = _State(
            calls=state.calls + 1,
            since=0,
            choice={"kind": decision.chosen.kind, **decision.chosen.settings},
            decided_residual=decision.chosen.residual,
            remeasure="",
            no_second_order=state.no_second_order or _operation_of(decision),
            decisions=state.decisions + 1,
        )
        info = HopInfo(
            f"auto:{decision.chosen.label}",
            spent,
            decision.chosen.residual if decision.converged else math.nan,
            state=new.plain(),
            decision=decision,
        )
        return HopResult(vjp=vjp, info=info)

    def _run_choice(
        self,
        inner: InnerLoss,
        w: Params,
        lam: Params,
        v: Params,
        context: HopContext,
        state: _State,
    ) -> HopResult:
        assert state.choice is not None  # trigger() measures when there is none
        method, label = self.build(state.choice)
        result = method(inner, w, lam, v, context)
        remeasure = ""
        decided = state.decided_residual
        solves = state.choice["kind"] in ("cg", "minres")
        if self.drift is not None and solves and math.isfinite(decided):
            residual = float(result.info.residual_value)  # one host sync (documented)
            if not residual <= self.drift * max(decided, 1e-30):
                remeasure = (
                    f"residual drift: {residual:.2e} > {self.drift:g} x {decided:.2e} at the "
                    "decision"
                )
        new = dataclasses.replace(
            state, calls=state.calls + 1, since=state.since + 1, remeasure=remeasure
        )
        info = HopInfo(
            f"auto:{label}",
            result.info.iterations,
            result.info.residual_value,
            state=new.plain(),
        )
        return HopResult(vjp=result.vjp, info=info)

    def build(self, choice: dict[str, Any]) -> tuple[Method, str]:
        """The method a decision's ``choice`` (``{"kind": "cg", "maxiter": 6, ...}``) runs,
        with its label."""
        kind = choice["kind"]
        if kind in ("cg", "minres"):
            k = int(choice["maxiter"])
            second = choice["products"] == "autograd"
            curvature: Curvature = DoubleBackward() if second else FiniteDifference()
            mixed: MixedRule = MixedAutograd() if second else MixedFiniteDifference()
            solver = linalg.conjugate_gradient(k, None) if kind == "cg" else linalg.minres(k, None)
            name = kind if second else f"{kind}_fd"
            method: Method = Implicit(solver, mixed, curvature, label=name)
            label = f"{name}({k})"
        elif kind == "darts":
            method = Implicit(linalg.identity(), MixedFiniteDifference(), label="darts")
            label = "darts"
        elif kind == "sama":
            method, label = Sama(float(choice["radius"])), "sama"
        elif kind == "first_order":
            method, label = FirstOrder(), "first_order"
        else:  # a checkpoint from elsewhere
            raise ValueError(f"auto: unknown choice {choice!r} in its saved state")
        if self.wrap is not None:
            method = method.with_curvature(self.wrap)
        return method, label

    def _average(self) -> Callable[[Params], Params]:
        if self.wrap is None:
            return _identity_average()
        op = self.wrap(_Capture())
        return lambda t: op.matvec(None)(t)  # type: ignore[arg-type]

    # ------------------------------------------------------------------------ measurement

    def measure(
        self,
        inner: InnerLoss,
        w: Params,
        lam: Params,
        v: Params,
        context: HopContext = NO_CONTEXT,
        trigger: str = "on request",
        state: _State | None = None,
    ) -> tuple[Decision | None, Params, int]:
        """Measure every candidate on ``(inner, w, lam, v)`` and choose.

        Returns the decision (``None`` when ``v`` is zero, so there is nothing to measure),
        the reference's answer and the products the measurement spent.
        """
        u = _tree.detach(v)
        ops = self._operators(inner, w, lam, u, context, state or _State())
        eps = max(torch.finfo(t.dtype).eps for t in w.values())
        tol = max(self.target / 1000.0, 100.0 * eps)
        runs = self._runs(ops, u, lam, tol)
        ref = runs[-1].answer
        spent = sum(r.products + len(r.points) for r in runs)
        if _tree.numel(ref) == 0 or float(_tree.norm(ref)) == 0.0:
            return None, _tree.neg(ref), spent
        w_bytes = sum(t.numel() * t.element_size() for t in w.values())
        rows: list[Candidate] = []
        if "first_order" in self.candidates:
            rows.append(Candidate("first_order", "first_order", {}, 1.0, 0.0, "nothing", 0.0))
        fd_rows, g_bytes = self._fd_rows(inner, w, lam, u, context, ref, w_bytes, ops.average)
        rows += fd_rows
        graph = ops.graph_bytes.total if ops.second else g_bytes
        rows += self._solver_rows(runs, ref, ops.second, graph, w_bytes)
        rows = [self._budgeted(c) for c in rows]
        chosen, within = self._choose(rows, runs[-1].converged)
        per_product = self.costs.product if ops.second else 2 * self.costs.gradient
        cost = (self.costs.graph if ops.second else 0.0) + sum(
            (r.products + len(r.points)) * per_product for r in runs
        )
        cost += 2 * self.costs.gradient * sum(1 for c in fd_rows if not c.excluded)
        spent += 2 * sum(1 for c in fd_rows if not c.excluded)
        decision = Decision(
            target=self.target,
            chosen=chosen,
            candidates=tuple(rows),
            reference=_describe(runs, tol),
            converged=runs[-1].converged,
            within_target=within,
            products="autograd" if ops.second else "finite_difference",
            why_first_order=ops.why,
            measurement_cost=cost,
            trigger=trigger,
        )
        return decision, _tree.neg(ref), spent

    def _operators(
        self,
        inner: InnerLoss,
        w: Params,
        lam: Params,
        u: Params,
        context: HopContext,
        state: _State,
    ) -> _Operators:
        """The products the measurement uses: double backward where it runs (tried with the
        first product, which the reference reuses), else central differences of gradients."""
        lin = Linearization(inner, w, lam)
        why = ""
        if self.first_order:
            why = "Config(curvature='finite_difference') asks for gradients only"
        elif context.first_order_only:
            why = "second-order autograd does not run on this level (FSDP2-sharded)"
        elif state.no_second_order:
            why = state.no_second_order
        graph_bytes = _SavedBytes()
        first: list[Params] = []
        if not why:
            try:
                with graph_bytes.hooks():
                    first.append(lin.hvp(u))
            except DoubleBackwardError as err:
                why = f"no double backward through {err.operation}"
        second = not why
        curvature: Curvature = DoubleBackward() if second else FiniteDifference()
        mixed_rule: MixedRule = MixedAutograd() if second else MixedFiniteDifference()
        if self.wrap is not None:
            curvature = self.wrap(curvature)
            first = []  # the reused product must be the wrapped (averaged) one
        local = curvature.matvec(lin)
        average = self._average()

        def matvec(p: Params) -> Params:
            return first.pop() if first else local(p)

        def mixed(x: Params) -> Params:
            return average(mixed_rule(lin, x))

        return _Operators(matvec, mixed, average, second, why, graph_bytes)

    def _runs(self, ops: _Operators, u: Params, lam: Params, tol: float) -> list[_Run]:
        """The conjugate-gradient reference, and MINRES after it where CG breaks down."""
        n = self.max_iterations

        def zeros() -> Params:
            return _tree.zeros_like(_tree.detach(lam))

        cg_run = _Run("cg")
        runs = [_record(cg_run, _cg_iterates(ops.matvec, u, n, cg_run), ops.mixed, tol, zeros)]
        if not cg_run.negative_curvature:
            return runs
        if self.indefinite == "truncate":  # Steihaug's convention: the last iterate before it
            cg_run.converged = cg_run.truncated = True
            return runs
        if "minres" in self.candidates:
            # an indefinite Hessian (a network away from a minimum): MINRES still converges
            mr = _Run("minres")
            runs.append(_record(mr, _minres_iterates(ops.matvec, u, n, mr), ops.mixed, tol, zeros))
        return runs

    def _fd_rows(
        self,
        inner: InnerLoss,
        w: Params,
        lam: Params,
        u: Params,
        context: HopContext,
        ref: Params,
        w_bytes: int,
        average: Callable[[Params], Params],
    ) -> tuple[list[Candidate], float]:
        """DARTS and SAMA, and the bytes one gradient's graph saves."""
        if "darts" not in self.candidates and "sama" not in self.candidates:
            return [], 0.0
        saved = _SavedBytes()
        with saved.hooks():
            darts_out = average(mixed_vjp_fd(inner, w, lam, u))
        g_bytes = saved.total / 2  # two evaluations of the loss
        memory = g_bytes + 2 * w_bytes
        rows = []
        if "darts" in self.candidates:
            rows.append(
                Candidate("darts", "darts", {}, _relative(darts_out, ref), 2.0, "2 G", memory)
            )
        if "sama" in self.candidates:
            rows.append(self._sama_row(inner, w, lam, u, context, ref, memory, average))
        return rows, g_bytes

    def _solver_rows(
        self, runs: list[_Run], ref: Params, second: bool, graph: float, w_bytes: int
    ) -> list[Candidate]:
        """``cg(k)`` and ``minres(k)`` at every recorded ``k``."""
        rows = []
        products = "autograd" if second else "finite_difference"
        for r in runs:
            if r.solver not in self.candidates:
                continue
            name = r.solver if second else f"{r.solver}_fd"
            vectors = {"cg": 4, "minres": 7}[r.solver] + (0 if second else 2)
            for k, (mx, res) in sorted(r.points.items()):
                if k == 0:
                    continue
                rows.append(
                    Candidate(
                        f"{name}({k})",
                        r.solver,
                        {"maxiter": k, "products": products},
                        _relative(mx, ref),
                        self.costs.cg(k, second),
                        f"{k} H + 1 M" + (" + graph" if second else " (2 G each)"),
                        graph + vectors * w_bytes,
                        residual=res,
                    )
                )
        return rows

    def _sama_row(
        self,
        inner: InnerLoss,
        w: Params,
        lam: Params,
        u: Params,
        context: HopContext,
        ref: Params,
        memory: float,
        average: Callable[[Params], Params],
    ) -> Candidate:
        if context.preconditioner is None:
            excluded = "no Adam state to precondition with: it equals darts here"
            return Candidate(
                "sama", "sama", {"radius": 1.0}, math.nan, 2.0, "2 G", memory, excluded
            )
        out = average(mixed_vjp_fd(inner, w, lam, _tree.mul(context.preconditioner, u), 1.0))
        error = _relative(out, ref)
        return Candidate("sama", "sama", {"radius": 1.0}, error, 2.0, "2 G", memory)

    def _budgeted(self, c: Candidate) -> Candidate:
        if self.memory_budget is None or c.excluded or c.memory <= self.memory_budget:
            return c
        why = f"needs about {c.memory / 2**20:.1f} MB, over the budget of "
        why += f"{self.memory_budget / 2**20:.1f} MB"
        return dataclasses.replace(c, excluded=why)

    def _choose(self, rows: list[Candidate], converged: bool) -> tuple[Candidate, bool]:
        able = [c for c in rows if not c.excluded]
        if not able:
            raise ValueError(
                "auto: no candidate fits: every method is over the memory budget "
                f"({self.memory_budget} bytes) or cannot run on this level; raise the budget "
                "(Config auto_memory_mb) or allow first_order among the candidates"
            )
        bound = self.safety * self.target
        # an unconverged reference certifies nothing: its own iterate would read as exact
        within = [c for c in able if c.error <= bound] if converged else []
        if within:
            return min(within, key=lambda c: (c.cost, c.error)), True
        return min(able, key=lambda c: (c.error, c.cost)), False


def _operation_of(decision: Decision) -> str:
    """The reason to skip the double-backward probe from now on (an operation without one)."""
    why = decision.why_first_order
    return why if why.startswith("no double backward") else ""


@dataclass(frozen=True)
class _State:
    """What ``auto`` keeps per hop, as plain values (saved in checkpoints)."""

    calls: int = 0
    since: int = 0
    choice: dict[str, Any] | None = None
    decided_residual: float = math.nan
    remeasure: str = ""
    no_second_order: str = ""
    decisions: int = 0

    @classmethod
    def load(cls, plain: Any) -> _State:
        if plain is None:
            return cls()
        if not isinstance(plain, dict) or plain.get("kind") != "auto":
            raise ValueError(
                f"auto: the saved state of this hop is not auto's ({type(plain).__name__}); "
                "the checkpoint was written with another method at this hop"
            )
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in plain.items() if k in fields})

    def plain(self) -> dict[str, Any]:
        return {"kind": "auto", **dataclasses.asdict(self)}

    def trigger(self, interval: int) -> str | None:
        """Why this call measures, or ``None`` when it runs the chosen method."""
        if self.choice is None:
            return "first call" if self.decisions == 0 else "no decision yet"
        if self.remeasure:
            return self.remeasure
        if self.since + 1 >= interval:
            return f"every {interval} calls"
        return None


def auto(
    target: float = 1e-2,
    *,
    interval: int = 100,
    drift: float | None = 10.0,
    memory_budget_mb: float | None = None,
    first_order: bool = False,
    max_iterations: int = 100,
    candidates: tuple[str, ...] = CANDIDATES,
) -> Auto:
    """The method that chooses itself, to a relative error ``target`` (see :class:`Auto`).

    Examples:
        On a quadratic with ``H = diag(1, 2, 4)``, a target of ``1e-3`` needs conjugate
        gradient's third iterate; DARTS (``H^{-1} ~ I``) is far off:

        >>> import torch
        >>> a = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
        >>> def inner(w, lam):  # H = diag(a), w* = lam / a
        ...     return 0.5 * (a * w["w"] ** 2).sum() - (w["w"] * lam["lam"]).sum()
        >>> w = {"w": torch.zeros(3, dtype=torch.float64)}
        >>> lam = {"lam": torch.ones(3, dtype=torch.float64)}
        >>> v = {"w": torch.ones(3, dtype=torch.float64)}
        >>> from ziggurat.hypergradient import auto
        >>> decision, _, _ = auto(1e-3).measure(inner, w, lam, v)
        >>> decision.chosen.label, decision.within_target
        ('cg(3)', True)
    """
    budget = None if memory_budget_mb is None else memory_budget_mb * 2**20
    return Auto(
        target,
        interval,
        drift,
        budget,
        first_order,
        max_iterations,
        candidates=tuple(candidates),
    )
