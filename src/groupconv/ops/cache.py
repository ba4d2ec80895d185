"""The one cache class for per-signature state: argument checks passed, eager-call problems, dispatch choices.

Each of these is keyed by a call signature (shapes, dtype, layout, ...). A model calls a handful of signatures
again and again, but a program that feeds inputs of ever new sizes (variable-length sequences, random crops)
would make any unbounded cache grow without limit. A BoundedCache keeps the most recently used entries only:
a forgotten signature is computed again on its next call, which costs what its first call cost.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, Hashable, TypeVar

# Far more signatures than a model has layers (ResNeXt-101: ~100 convs, each with 4 dispatch problems), and small:
# an entry is a few hundred bytes.
DEFAULT_MAX_ENTRIES = 4096

Value = TypeVar("Value")


class BoundedCache(Generic[Value]):
    """A dict that keeps at most `max_entries` entries, dropping the least recently used."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES):
        if max_entries <= 0:
            raise ValueError(f"max_entries={max_entries} must be positive")
        self.max_entries = max_entries
        self._entries: OrderedDict[Hashable, Value] = OrderedDict()

    def get(self, key: Hashable) -> Value | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: Hashable, value: Value) -> Value:
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return value

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries
