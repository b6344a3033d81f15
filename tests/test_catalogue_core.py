"""Catalogue of the core: the dependency-graph validator, linear solvers, method presets and
tree helpers, against bad inputs and, by property-based tests (Hypothesis), against random
graphs, random SPD systems and random trees.
"""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ziggurat import _tree, linalg
from ziggurat import hypergradient as hg
from ziggurat.engine._graph import parse

D = torch.float64
FAST = settings(max_examples=30, deadline=None)


# --------------------------------------------------------------------------- dependency graphs
@st.composite
def hierarchies(draw):
    """Levels named in a random order; ``l2u`` edges only from a level to one ranked above it
    (so the graph is acyclic), and ``u2l`` edges only where an ``l2u`` chain leads back."""
    n = draw(st.integers(1, 6))
    names = draw(st.permutations([f"p{i}" for i in range(n)]))
    l2u = {names[i]: [names[j] for j in range(i + 1, n) if draw(st.booleans())] for i in range(n)}
    l2u = {low: ups for low, ups in l2u.items() if ups}
    reach = {name: set() for name in names}  # the levels above each level, through l2u
    for i in reversed(range(n)):
        for up in l2u.get(names[i], []):
            reach[names[i]] |= {up} | reach[up]
    u2l: dict[str, list[str]] = {}
    for low in names:
        for up in sorted(reach[low]):
            if draw(st.booleans()):
                u2l.setdefault(up, []).append(low)
    return names, l2u, u2l, reach


@FAST
@given(hierarchies())
def test_random_hierarchies_are_accepted_with_a_path_per_u2l_chain(graph) -> None:
    names, l2u, u2l, _ = graph
    parsed = parse(names, {"l2u": l2u, "u2l": u2l})
    for up, lows in u2l.items():
        assert all(p[0] == p[-1] == up for p in parsed.paths[up])
        assert {p[-2] for p in parsed.paths[up]} == set(lows)
    assert set(parsed.leaves) == {n for n in names if not any(n in ups for ups in l2u.values())}


@FAST
@given(hierarchies(), st.data())
def test_an_edge_back_down_a_chain_is_refused_naming_a_real_cycle(graph, data) -> None:
    names, l2u, u2l, reach = graph
    chained = [(low, up) for low in names for up in sorted(reach[low])]
    if not chained:
        return
    low, up = data.draw(st.sampled_from(chained))
    l2u = {**l2u, up: [*l2u.get(up, []), low]}  # `up` now also steps below `low`
    with pytest.raises(ValueError, match=r"dependencies contain a cycle: (\w+)( -> \w+)+; ") as e:
        parse(names, {"l2u": l2u, "u2l": u2l})
    cycle = str(e.value).split(": ", 1)[1].split(";")[0].split(" -> ")
    edges = {(a, b) for a, bs in l2u.items() for b in bs} | {
        (b, a) for a, bs in u2l.items() for b in bs
    }
    assert cycle[0] == cycle[-1] and len(cycle) >= 3
    assert all((a, b) in edges for a, b in pairwise(cycle))


@FAST
@given(hierarchies(), st.data())
def test_a_u2l_edge_without_a_chain_back_is_refused(graph, data) -> None:
    names, l2u, u2l, reach = graph
    unlinked = [  # neither above the other: no chain back, and no cycle either
        (u, low)
        for low in names
        for u in names
        if u != low and u not in reach[low] and low not in reach[u]
    ]
    if not unlinked:
        return
    up, low = data.draw(st.sampled_from(unlinked))
    with pytest.raises(
        ValueError, match=rf"u2l edge {up} -> {low} has no l2u path from '{low}' back to '{up}'"
    ):
        parse(names, {"l2u": l2u, "u2l": {**u2l, up: [*u2l.get(up, []), low]}})


@pytest.mark.parametrize(
    ("names", "deps", "words"),
    [
        (["a", "a"], None, r"duplicate problem names \['a'\]; every problem needs a unique name"),
        (["a"], ["a"], r"dependencies must be a dict with 'u2l' and 'l2u', got list"),
        (["a"], {"up2low": {}}, r"dependencies has unknown keys \['up2low'\]; use 'u2l' and"),
        (["a"], {"l2u": {"a": ["b"]}}, r"l2u\['a'\] names problem 'b', which is not in `probl"),
        (["a"], {"l2u": {"a": ["a"]}}, r"l2u edge a -> a points a problem at itself"),
        (["a"], {"l2u": {"a": [3]}}, r"l2u\['a'\] holds 3, which is not a problem or a name"),
        (["a", "b"], {"l2u": []}, r"dependencies\['l2u'\] must be a dict, got list"),
    ],
    ids=["duplicate", "not-a-dict", "unknown-key", "unknown-name", "self", "not-a-name", "list"],
)
def test_malformed_dependencies_are_refused(names, deps, words) -> None:
    with pytest.raises(ValueError, match=words):
        parse(names, deps)


# ------------------------------------------------------------------------------ linear solvers
@st.composite
def spd_systems(draw):
    """A random SPD matrix (eigenvalues in [0.5, 20]) split over a tree of one or two leaves,
    and a right-hand side."""
    n = draw(st.integers(1, 7))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=D, generator=g))
    eigs = 0.5 + 19.5 * torch.rand(n, dtype=D, generator=g)
    h = q @ torch.diag(eigs) @ q.T
    b = torch.randn(n, dtype=D, generator=g)
    cut = draw(st.integers(0, n))
    like = {"a": torch.zeros(cut, dtype=D), "b": torch.zeros(n - cut, dtype=D)}
    return h, b, like


def _solve(solver, h, b, like):
    def matvec(v):
        return _tree.unflatten(h @ _tree.flatten(v), like)

    return solver(matvec, _tree.unflatten(b, like))


@FAST
@given(spd_systems())
def test_conjugate_gradient_is_exact_in_n_iterations_on_random_spd_systems(system) -> None:
    h, b, like = system
    n = b.numel()
    result = _solve(linalg.conjugate_gradient(maxiter=n, tol=1e-14), h, b, like)
    expected = torch.linalg.solve(h, b)
    assert result.iterations <= n
    torch.testing.assert_close(_tree.flatten(result.x), expected, rtol=1e-8, atol=1e-10)


@FAST
@given(spd_systems(), st.floats(0.0, 2.0))
def test_dense_solves_random_spd_systems_with_damping_exactly(system, damping) -> None:
    h, b, like = system
    result = _solve(linalg.dense(damping=damping), h, b, like)
    expected = torch.linalg.solve(h + damping * torch.eye(len(b), dtype=D), b)
    torch.testing.assert_close(_tree.flatten(result.x), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    ("build", "error", "words"),
    [
        (lambda: linalg.conjugate_gradient(maxiter=0), ValueError, r"cg maxiter must be an integ"),
        (lambda: linalg.conjugate_gradient(tol=-1.0), ValueError, r"cg tol must be a finite num"),
        (lambda: linalg.dense(max_size=0), ValueError, r"dense max_size must be an integer >= 1"),
        (lambda: hg.cg(0), ValueError, r"cg maxiter must be an integer >= 1, got 0"),
        (lambda: hg.neumann(-1), ValueError, r"neumann iterations must be an integer >= 0"),
        (lambda: hg.neumann(3, alpha=0), ValueError, r"neumann alpha must be a finite number >"),
        (lambda: hg.sama(radius=-1), ValueError, r"sama radius must be a finite number > 0"),
        (lambda: hg.fixed_point(0, 0.1), ValueError, r"fixed_point iterations must be an int"),
        (lambda: hg.penalty(0), ValueError, r"penalty steps must be an integer >= 1, got 0"),
        (
            lambda: hg.from_name("bogus"),
            ValueError,
            r"unknown hypergradient method 'bogus'; choose one of \['auto', 'cg', 'darts'",
        ),
        (lambda: hg.from_name("cg", bogus=1), TypeError, r"unexpected keyword argument 'bogus'"),
        (
            lambda: hg.Implicit(solver="cg"),
            ValueError,
            r"implicit solver must be a linear solver, a ziggurat.linalg.LinearSolver",
        ),
    ],
    ids=[
        "cg-maxiter",
        "cg-tol",
        "dense-size",
        "preset-cg",
        "preset-neumann",
        "neumann-alpha",
        "sama-radius",
        "fixed-point",
        "penalty",
        "unknown-preset",
        "preset-option",
        "solver-string",
    ],
)
def test_bad_solver_and_preset_options_are_refused_where_they_enter(build, error, words) -> None:
    with pytest.raises(error, match=words):
        build()


def test_solver_inputs_that_cannot_be_solved_are_refused() -> None:
    ones = {"a": torch.ones(3, dtype=D)}
    with pytest.raises(ValueError, match=r"dense solve: 3 unknowns exceed max_size=2; use conj"):
        linalg.dense(max_size=2)(lambda v: v, ones)
    with pytest.raises(ValueError, match=r"dense solve: the Hessian is singular .*add damping"):
        linalg.dense()(_tree.zeros_like, ones)
    warm = linalg.conjugate_gradient(3, warm_start=True)
    with pytest.raises(ValueError, match=r"cg warm start x0: shape of 'a' is \(2,\), expected"):
        warm(lambda v: v, ones, {"a": torch.ones(2, dtype=D)})
    with pytest.raises(ValueError, match=r"cg: the right-hand side b .* is not finite: .*\['a'\]"):
        linalg.conjugate_gradient(3)(lambda v: v, {"a": torch.tensor([1.0, math.nan])})


# ------------------------------------------------------------------------------- tree helpers
shapes = st.lists(st.integers(1, 3), min_size=0, max_size=3).map(tuple)


@st.composite
def tree_pairs(draw):
    """Two random trees with the same keys and shapes (``float64``), keys in a random order."""
    keys = draw(
        st.lists(st.text("abcxyz", min_size=1, max_size=3), min_size=1, max_size=5, unique=True)
    )
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    layout = {k: draw(shapes) for k in keys}
    a = {k: torch.randn(s, dtype=D, generator=g) for k, s in layout.items()}
    b = {k: torch.randn(s, dtype=D, generator=g) for k, s in layout.items()}
    return a, b


@FAST
@given(tree_pairs(), st.floats(-3, 3))
def test_tree_arithmetic_matches_the_flat_vectors_and_keeps_key_order(pair, alpha) -> None:
    a, b = pair
    fa, fb = _tree.flatten(a), _tree.flatten(b)
    for out, flat in (
        (_tree.add(a, b), fa + fb),
        (_tree.sub(a, b), fa - fb),
        (_tree.scale(a, alpha), alpha * fa),
        (_tree.axpy(alpha, a, b), alpha * fa + fb),
        (_tree.neg(a), -fa),
        (_tree.mul(a, b), fa * fb),
    ):
        assert list(out) == list(a)
        torch.testing.assert_close(_tree.flatten(out), flat, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(_tree.dot(a, b), fa @ fb)
    torch.testing.assert_close(_tree.norm(a), fa.norm())
    assert _tree.numel(a) == fa.numel()
    back = _tree.unflatten(fa, a)
    assert list(back) == list(a) and all(torch.equal(back[k], a[k]) for k in a)
    inplace = _tree.axpy_(alpha, a, {k: t.clone() for k, t in b.items()})
    torch.testing.assert_close(_tree.flatten(inplace), alpha * fa + fb, rtol=1e-12, atol=1e-12)


@FAST
@given(tree_pairs(), st.floats(1e-3, 10.0))
def test_clipping_by_global_norm_bounds_the_norm_and_keeps_directions(pair, bound) -> None:
    a, _ = pair
    clipped = _tree.clip_by_global_norm(a, bound)
    norm = float(_tree.norm(a))
    assert float(_tree.norm(clipped)) <= bound * (1 + 1e-9) or norm <= bound
    if norm <= bound:
        torch.testing.assert_close(_tree.flatten(clipped), _tree.flatten(a))


@FAST
@given(tree_pairs(), st.data())
def test_trees_of_other_keys_or_shapes_are_refused_naming_the_key(pair, data) -> None:
    a, b = pair
    key = data.draw(st.sampled_from(sorted(a)))
    wider = {**b, key: torch.zeros(*b[key].shape, 2, dtype=D)}
    with pytest.raises(ValueError, match=rf"x0: shape of '{key}' is .*, expected"):
        _tree.check_same_shapes(a, wider, "x0")
    fewer = {k: t for k, t in b.items() if k != key}
    with pytest.raises(
        ValueError, match=rf"x0: keys do not match \(missing \['{key}'\], unexpected \[\]\)"
    ):
        _tree.check_same_keys(a, fewer, "x0")
