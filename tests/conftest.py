from __future__ import annotations

import pytest
import torch

# The test problems are tiny: one intra-op thread avoids thread start-up and, on a loaded
# machine, spin-waiting that makes each small product ten to a hundred times slower.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
