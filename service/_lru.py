"""The service's content-hash cache: a repeated upload costs a hash, not a forward pass."""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np


class LRU:
    """sha256 of an upload -> its vector, least recently used evicted first."""

    def __init__(self, size: int):
        self.size = size
        self.hits = 0
        self.misses = 0
        self._d: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> np.ndarray | None:
        with self._lock:
            v = self._d.get(key)
            if v is None:
                self.misses += 1
                return None
            self._d.move_to_end(key)
            self.hits += 1
            return v

    def put(self, key: str, value: np.ndarray) -> None:
        if self.size <= 0:
            return
        with self._lock:
            self._d[key] = value
            self._d.move_to_end(key)
            while len(self._d) > self.size:
                self._d.popitem(last=False)

    def stats(self) -> dict:
        return {
            "size": len(self._d),
            "capacity": self.size,
            "hits": self.hits,
            "misses": self.misses,
        }
