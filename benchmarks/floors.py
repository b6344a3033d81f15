"""Cost floors of hypergradient methods, as pure functions of measured timings.

Primitive costs, each timed with plain ``torch.autograd`` (no ziggurat code) on the same inner
problem and in the same run as the methods:

* ``G``: one gradient of the inner loss with respect to ``lam`` at fixed ``w`` (forward and
  backward), the unit DARTS and SAMA spend twice;
* ``Gw``: one gradient with respect to ``w`` (forward and backward), for reference;
* ``B``: building the gradient graph ``g = grad_w f(w, lam)`` with ``create_graph=True``;
* ``H``: one Hessian-vector product through that graph, as a marginal cost:
  ``(time(B + K products) - time(B)) / K``;
* ``M``: one mixed product ``(d^2 f/dlam dw) u`` through the same graph, measured the same way;
* ``FO``: one call of the ``first_order`` method (its own timing in the table).

Floors (what any implementation of the method must spend):

* ``darts``, ``sama``: ``FO + 2 G`` (two gradients of a central difference, on top of what a
  first-order hop costs);
* ``neumann(K)``, ``cg(K)``: ``B + (K + 1) H`` (build the graph once, ``K`` products for the
  solve and one for the mixed product, counted as an ``H``). This is the "``K + 1`` H" of the
  method's mathematics with ``H`` taken as a marginal product through a built graph, which is
  why the build ``B`` appears once; ``K + 1`` self-contained products (each with its own graph)
  would cost ``(K + 1)(B + H)``, a looser floor against which every ratio would be lower.
  The tight floor counts the mixed product at its own measured cost: ``B + K H + M``;
* ``unrolled(T)``: ``T (B + H)``: every differentiated step builds a gradient graph, and the
  reverse pass crosses each of them once (a Hessian-vector and a mixed product in one backward).
  The tight floor is the same;
* ``first_order``: ``FO`` itself (ratio 1 by definition).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

KINDS = ("first_order", "darts", "sama", "neumann", "cg", "unrolled")


@dataclass(frozen=True)
class Primitives:
    """Per-primitive costs in seconds (see the module docstring)."""

    g: float
    g_w: float
    build: float
    hvp: float
    mixed: float
    first_order: float


def primitives_from_timings(t: Mapping[str, float], products: int) -> Primitives:
    """Primitive costs from median timings.

    ``t`` holds ``G``, ``Gw``, ``B``, ``B+KH``, ``B+KM`` and ``FO`` in seconds, where ``K`` is
    ``products``. Marginal product costs must come out positive, otherwise the timings are
    noise and no floor can be drawn from them.
    """
    if products < 1:
        raise ValueError(f"products must be >= 1, got {products}")
    hvp = (t["B+KH"] - t["B"]) / products
    mixed = (t["B+KM"] - t["B"]) / products
    for name, value in (("H", hvp), ("M", mixed)):
        if value <= 0:
            raise ValueError(
                f"marginal {name} cost is {value:.3g} s: B+K products was not slower than B; "
                "the timings are too noisy to measure it"
            )
    return Primitives(
        g=t["G"], g_w=t["Gw"], build=t["B"], hvp=hvp, mixed=mixed, first_order=t["FO"]
    )


@dataclass(frozen=True)
class MethodSpec:
    """What a timed method is, for its floor: a kind from ``KINDS`` and its iteration count."""

    label: str
    kind: str
    k: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"method kind must be one of {list(KINDS)}, got {self.kind!r}")
        if self.kind in ("neumann", "cg", "unrolled") and self.k < 1:
            raise ValueError(f"{self.kind} needs k >= 1, got {self.k}")


@dataclass(frozen=True)
class Floor:
    formula: str
    seconds: float
    tight_seconds: float


def floor(spec: MethodSpec, p: Primitives) -> Floor:
    """The floor of one method from the primitive costs (see the module docstring)."""
    if spec.kind == "first_order":
        return Floor("FO", p.first_order, p.first_order)
    if spec.kind in ("darts", "sama"):
        s = p.first_order + 2 * p.g
        return Floor("FO + 2 G", s, s)
    if spec.kind in ("neumann", "cg"):
        k = spec.k
        return Floor(f"B + {k + 1} H", p.build + (k + 1) * p.hvp, p.build + k * p.hvp + p.mixed)
    s = spec.k * (p.build + p.hvp)
    return Floor(f"{spec.k} (B + H)", s, s)


@dataclass(frozen=True)
class Row:
    label: str
    seconds: float
    in_g: float
    in_h: float
    floor: Floor
    ratio: float
    tight_ratio: float


def rows(specs: Sequence[MethodSpec], seconds: Mapping[str, float], p: Primitives) -> list[Row]:
    """One row per method: its time, in ``G`` and ``H`` units, its floor and the ratios."""
    out = []
    for spec in specs:
        s = seconds[spec.label]
        f = floor(spec, p)
        out.append(Row(spec.label, s, s / p.g, s / p.hvp, f, s / f.seconds, s / f.tight_seconds))
    return out


def within(row: Row, margin: float = 0.15) -> bool:
    """Whether a method is within ``margin`` of its floor."""
    return row.ratio <= 1.0 + margin


def primitives_table(p: Primitives) -> str:
    lines = [
        "| primitive | ms | in G | in H |",
        "|---|---:|---:|---:|",
    ]
    for name, s in (
        ("G (grad wrt lam)", p.g),
        ("Gw (grad wrt w)", p.g_w),
        ("B (gradient graph build)", p.build),
        ("H (HVP, marginal)", p.hvp),
        ("M (mixed product, marginal)", p.mixed),
        ("FO (first_order call)", p.first_order),
    ):
        lines.append(f"| {name} | {s * 1e3:.3f} | {s / p.g:.2f} | {s / p.hvp:.2f} |")
    return "\n".join(lines)


def methods_table(table: Sequence[Row]) -> str:
    lines = [
        "| method | median ms | in G | in H | floor | floor ms | ratio | tight ratio |",
        "|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in table:
        lines.append(
            f"| {r.label} | {r.seconds * 1e3:.3f} | {r.in_g:.2f} | {r.in_h:.2f} | "
            f"{r.floor.formula} | {r.floor.seconds * 1e3:.3f} | {r.ratio:.3f} | "
            f"{r.tight_ratio:.3f} |"
        )
    return "\n".join(lines)
