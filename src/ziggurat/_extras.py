"""Optional packages: a missing one is a one-line error naming the extra that installs it."""

from __future__ import annotations

import importlib
from types import ModuleType

EXTRAS = {
    "sklearn": ("scikit-learn", "examples"),
    "tqdm": ("tqdm", "progress"),
    "matplotlib": ("matplotlib", "plot"),
    "torch.utils.tensorboard": ("tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
    "mlflow": ("mlflow-skinny", "mlflow"),
}
"""Top-level module -> (the PyPI package that provides it, the ziggurat extra that installs it)."""


class MissingExtraError(ImportError):
    """An optional package is not installed; the message is one line naming the extra.

    A subclass of :class:`ImportError`, so ``except ImportError`` still catches it; the
    command line prints it as one line with exit status 2.
    """


def missing(feature: str, module: str, *, extra: str | None = None) -> MissingExtraError:
    """The error for ``feature`` needing the optional ``module``.

    Args:
        feature: what needs the package, as the user called it (``"ziggurat demo --plot"``).
        module: the module that failed to import: a key of :data:`EXTRAS` or a submodule of
            one (``"sklearn.datasets"``).
        extra: the extra to name, when it is not the module's own (``"examples"`` for tqdm
            from the examples, which install it too).
    """
    package, own_extra = EXTRAS[module if module in EXTRAS else module.partition(".")[0]]
    return MissingExtraError(
        f"{feature} needs {package}, which is not installed; "
        f"pip install 'ziggurat[{extra or own_extra}]'"
    )


def require_extra(module: str, feature: str, *, extra: str | None = None) -> ModuleType:
    """Import the optional ``module`` or raise :class:`MissingExtraError` for ``feature``.

    Examples:
        >>> require_extra("math", "a doctest").sqrt(4.0)
        2.0
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise missing(feature, module, extra=extra) from err
