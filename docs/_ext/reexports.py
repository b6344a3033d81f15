"""A griffe extension: ``from ._x import name as name`` makes ``name`` public.

The package ``__init__`` modules re-export their public names with the redundant-alias form of
PEP 484 (``import a as a``), which type checkers read as an explicit export. griffe reads only
``__all__``, so without this extension the API pages would list nothing.
"""

from __future__ import annotations

import ast
from typing import Any

import griffe


class RedundantAliases(griffe.Extension):
    """Mark each alias imported as ``x as x`` public."""

    def on_alias_instance(self, *, node: ast.AST | Any, alias: griffe.Alias, **kwargs: Any) -> None:
        if not isinstance(node, ast.ImportFrom | ast.Import):
            return
        for name in node.names:
            if name.asname is not None and name.asname == name.name == alias.name:
                alias.public = True
