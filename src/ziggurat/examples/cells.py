"""The search space of the ``nas`` example: candidate operations, mixed edges, cells, network.

Every operation maps ``(n, C, h, w)`` to the same shape, so any of them can sit on any edge. A
network takes one row of mixing weights per edge: ``softmax(alpha)`` for the supernet, a column
of ones for a discrete cell (one operation per edge).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

OPS = ("conv_3x3", "dil_conv_3x3", "max_pool_3x3", "avg_pool_3x3", "skip", "zero")
NODES, CELLS, CHANNELS = 2, 2, 16


def edges(nodes: int = NODES) -> list[tuple[int, int]]:
    """The edges ``(i, j)``, ``i < j``, of a cell with ``nodes`` intermediate nodes."""
    return [(i, j) for j in range(1, nodes + 1) for i in range(j)]


class Zero(nn.Module):
    """The operation that cuts an edge."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mul(0.0)


def _conv(dilation: int) -> Callable[[int], nn.Module]:
    def build(channels: int) -> nn.Module:
        conv = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation, bias=False)
        return nn.Sequential(nn.ReLU(), conv, nn.BatchNorm2d(channels, affine=False))

    return build


_BUILDERS: dict[str, Callable[[int], nn.Module]] = {
    "conv_3x3": _conv(1),
    "dil_conv_3x3": _conv(2),
    "max_pool_3x3": lambda _: nn.MaxPool2d(3, stride=1, padding=1),
    "avg_pool_3x3": lambda _: nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False),
    "skip": lambda _: nn.Identity(),
    "zero": lambda _: Zero(),
}


def operation(name: str, channels: int) -> nn.Module:
    """One candidate operation; every one maps ``(n, C, h, w)`` to the same shape.

    Convolutions are ReLU-conv-BN (the batch norm without affine parameters, as in DARTS).
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown operation {name!r}; choose one of {OPS}")
    return _BUILDERS[name](channels)


class MixedOp(nn.Module):
    """``sum_k w_k op_k(x)`` over the given operations.

    ``zero`` adds nothing, so it is not computed; its weight still takes its share of the
    softmax, which is how it competes with the other operations.
    """

    def __init__(self, names: tuple[str, ...], channels: int) -> None:
        super().__init__()
        self.ops = nn.ModuleList(operation(n, channels) for n in names)

    def forward(self, x: Tensor, weights: Tensor) -> Tensor:
        terms = [
            w * op(x) for w, op in zip(weights, self.ops, strict=True) if not isinstance(op, Zero)
        ]
        return sum(terms[1:], terms[0]) if terms else x.mul(0.0)


class Cell(nn.Module):
    """Node ``j`` sums one mixed operation per earlier node; the output sums nodes ``1..``."""

    def __init__(self, candidates: list[tuple[str, ...]], channels: int) -> None:
        super().__init__()
        self.edges = edges()
        if len(candidates) != len(self.edges):
            raise ValueError(f"need operations for {len(self.edges)} edges, got {len(candidates)}")
        self.mixed = nn.ModuleList(MixedOp(c, channels) for c in candidates)
        self.norm = nn.BatchNorm2d(channels)  # keeps parameter-free cells at a trainable scale

    def forward(self, x: Tensor, weights: Tensor) -> Tensor:
        nodes = [x]
        for j in range(1, NODES + 1):
            inputs = [
                mixed(nodes[i], w)
                for (i, jj), mixed, w in zip(self.edges, self.mixed, weights, strict=True)
                if jj == j
            ]
            nodes.append(sum(inputs[1:], inputs[0]))
        return self.norm(sum(nodes[2:], nodes[1]))


class Network(nn.Module):
    """Stem convolution, ``CELLS`` cells (a 2x2 max pool between two), global average pooling
    and a linear classifier.

    ``candidates[e]`` are the operations of edge ``e`` (all of :data:`OPS` for the supernet,
    one each for a discrete architecture); ``forward(x, weights)`` takes one row of mixing
    weights per edge, shared by every cell (as DARTS shares its normal cell).
    """

    def __init__(self, side: int, candidates: list[tuple[str, ...]], classes: int = 10) -> None:
        super().__init__()
        self.side = side
        stride = 2 if side > 16 else 1  # Fashion-MNIST's 28x28 becomes 14x14
        self.stem = nn.Sequential(
            nn.Conv2d(1, CHANNELS, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(CHANNELS),
        )
        self.cells = nn.ModuleList(Cell(candidates, CHANNELS) for _ in range(CELLS))
        self.head = nn.Linear(CHANNELS, classes)

    def forward(self, x: Tensor, weights: Tensor) -> Tensor:
        h = self.stem(x.view(-1, 1, self.side, self.side))
        # channels-last makes the 3x3 pools three times faster on CPU
        h = h.contiguous(memory_format=torch.channels_last)
        for k, cell in enumerate(self.cells):
            h = F.max_pool2d(h, 2) if k > 0 else h
            h = cell(h, weights)
        return self.head(F.relu(h).mean((2, 3)))


def derive(alpha: Tensor) -> list[str]:
    """The strongest operation of each edge, ``zero`` excluded (Liu et al. 2019, sec. 2.4)."""
    keep = [k for k, name in enumerate(OPS) if name != "zero"]
    return [OPS[keep[int(row[keep].argmax())]] for row in alpha]


def random_cell(gen: torch.Generator) -> list[str]:
    """One non-zero operation per edge, uniformly at random."""
    keep = [o for o in OPS if o != "zero"]
    return [keep[int(torch.randint(len(keep), (), generator=gen))] for _ in edges()]
