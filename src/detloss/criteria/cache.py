"""Per-layout constant tensors of a criterion, built once per input layout in eager mode."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

T = TypeVar("T")


class ConstantCache:
    """A criterion's constant tensors (grids, index tables) per input layout, built once in eager mode.

    Rebuilding them costs a dozen small launches per call; YOLO's ``Detect`` caches its grids the same
    way. Under ``torch.compile`` they are built inside the traced graph instead (the compiler folds
    them), so the cache never leaks tensors into a graph or guards on its contents.
    """

    def __init__(self, size: int = 8) -> None:
        self._items: dict[tuple, object] = {}
        self._size = size

    def get(self, key: tuple, build: Callable[[], T]) -> T:
        if torch.compiler.is_compiling():
            return build()
        # tensors made under inference_mode cannot be saved for a later backward: kept apart
        key = (*key, torch.is_inference_mode_enabled())
        value = self._items.get(key)
        if value is None:
            if len(self._items) >= self._size:
                self._items.clear()
            value = self._items[key] = build()
        return value  # type: ignore[return-value]
