"""Evaluating a module with its parameters replaced, without re-walking it on every call.

``torch.func.functional_call`` walks the whole module tree on each call: it re-derives which
tensors are tied, builds a member accessor and checks every name, which costs 40-100 us per
call on a two-layer MLP. A pure loss ``f(w, lam)`` evaluates the same modules several times
per step (twice per DARTS upper step, once per gradient graph), so at 10k parameters that walk
was a quarter of an upper step. Here the walk is done once per module and kept as a table of
slots: for each parameter and buffer, the dict that owns it (a submodule's ``_parameters`` or
``_buffers``), the attribute name there, and the canonical name (the first name of a tied
tensor, as ``named_parameters()`` reports it). A substitution writes the given tensors into
those slots and restores the originals afterwards, exactly what ``functional_call`` writes
(ties are respected as with its default ``tie_weights=True``).

The table is checked on every call against a fingerprint of the module's structure: every
submodule and every parameter object (by identity) and every buffer name. Replacing, adding
or removing a submodule, a parameter or a buffer anywhere in the tree changes it, and the
table is rebuilt. Buffers are read from their slots at call time (and tied buffers found by
identity then), so buffers reassigned by a forward pass do not invalidate the table.
"""

from __future__ import annotations

import operator
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from .._types import Params

_Slot = tuple[dict[str, Any], str, str]  # (owning dict, attribute, canonical name)


def _fingerprint(modules: list[nn.Module]) -> tuple[tuple[object, ...], tuple[str, ...]]:
    objects: list[object] = []
    buffer_names: list[str] = []
    for m in modules:
        objects.extend(m._modules.values())
        objects.extend(m._parameters.values())
        buffer_names.extend(m._buffers)
        buffer_names.append("/")  # separates modules: moving a buffer changes the names
    return tuple(objects), tuple(buffer_names)


@dataclass(frozen=True)
class _Table:
    modules: list[nn.Module]  # strong references: the fingerprint's identities stay unique
    fingerprint: tuple[tuple[object, ...], tuple[str, ...]]
    params: list[_Slot]
    buffers: list[tuple[dict[str, Any], str]]
    names: frozenset[str]

    def matches(self, modules: list[nn.Module]) -> bool:
        objects, buffer_names = _fingerprint(modules)
        mine, my_names = self.fingerprint
        return (
            len(objects) == len(mine)
            and all(map(operator.is_, objects, mine))
            and buffer_names == my_names
        )


def _slots(root: nn.Module, named: Iterator[tuple[str, Tensor]], kind: str) -> list[_Slot]:
    canonical: dict[int, str] = {}
    seen: set[tuple[int, str]] = set()
    out: list[_Slot] = []
    for name, tensor in named:
        prefix, _, attr = name.rpartition(".")
        owner = getattr(root.get_submodule(prefix), kind)
        if (id(owner), attr) in seen:  # a submodule reachable by two paths: one slot
            continue
        seen.add((id(owner), attr))
        out.append((owner, attr, canonical.setdefault(id(tensor), name)))
    return out


def _build(root: nn.Module) -> _Table:
    modules = [m for _, m in root.named_modules(remove_duplicate=False)]
    params = _slots(root, root.named_parameters(remove_duplicate=False), "_parameters")
    named_buffers = root.named_buffers(remove_duplicate=False)
    buffers = [(owner, attr) for owner, attr, _ in _slots(root, named_buffers, "_buffers")]
    names = frozenset(c for _, _, c in params)
    return _Table(modules, _fingerprint(modules), params, buffers, names)


_TABLES: weakref.WeakKeyDictionary[nn.Module, _Table] = weakref.WeakKeyDictionary()


def _table(root: nn.Module) -> _Table:
    table = _TABLES.get(root)
    if table is None or not table.matches(table.modules):
        table = _build(root)
        _TABLES[root] = table
    return table


def _check_names(root: nn.Module, table: _Table, values: Params) -> None:
    if not table.names.issuperset(values):
        unknown = sorted(set(values) - table.names)
        raise ValueError(
            f"{type(root).__name__} has no parameters named {unknown}; known: {sorted(table.names)}"
        )


@contextmanager
def _restored() -> Iterator[list[tuple[dict[str, Any], str, Any]]]:
    """A list of ``(owning dict, attribute, old value)`` put back on exit, last first."""
    saved: list[tuple[dict[str, Any], str, Any]] = []
    try:
        yield saved
    finally:
        for owner, attr, old in reversed(saved):
            owner[attr] = old


def _put_parameters(
    saved: list[tuple[dict[str, Any], str, Any]], root: nn.Module, values: Params
) -> _Table:
    table = _table(root)
    _check_names(root, table, values)
    for owner, attr, name in table.params:
        if name in values:
            saved.append((owner, attr, owner[attr]))
            owner[attr] = values[name]
    return table


@contextmanager
def substituted_parameters(pairs: list[tuple[nn.Module, Params]]) -> Iterator[None]:
    """Within the block, each module's parameters are the given tensors, by name; its buffers
    are the live ones.

    What ``torch.func.functional_call(module, values, ...)`` does for every call inside the
    block: ``module(x)``, ``module.w``, ``module.parameters()`` and ``module.state_dict()``
    all read the given tensors, and a forward pass in training mode updates the live buffers
    (batch-norm running statistics) as an ordinary call would. Parameters not named keep their
    live values. Everything is restored on exit, also on an exception.
    """
    with _restored() as saved:
        for root, values in pairs:
            _put_parameters(saved, root, values)
        yield


@contextmanager
def substituted(pairs: list[tuple[nn.Module, Params]]) -> Iterator[None]:
    """Within the block, each module's parameters are the given tensors, by name.

    Parameters not named keep their live values; every buffer is replaced by a copy of itself,
    so that the block (e.g. a batch-norm forward in training mode) leaves the live modules
    exactly as they were. Everything is restored on exit, also on an exception.
    """
    with _restored() as saved:
        for root, values in pairs:
            table = _put_parameters(saved, root, values)
            copies: dict[int, Tensor] = {}  # tied buffers share one copy
            for owner, attr in table.buffers:
                live = owner[attr]
                saved.append((owner, attr, live))
                if live is not None:
                    owner[attr] = copies.setdefault(id(live), live.clone())
        yield


def call_substituted(fn: Callable[[], Tensor], pairs: list[tuple[nn.Module, Params]]) -> Tensor:
    """``fn()`` with each module's parameters replaced (see :func:`substituted`)."""
    with substituted(pairs):
        return fn()
