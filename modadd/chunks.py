"""Passes over many rows (the p*p input pairs) in slices of a bounded size.

p*p pairs times p logits is 13.5 GB at p = 1500 and grows as p^3, so every all-pairs
computation, of either family, walks the pairs in slices whose activations take at most
`max_bytes`; what it keeps between slices is O(p^2) at most.
"""

from __future__ import annotations

from collections.abc import Iterator

MAX_BYTES = 2**27  # 128 MiB of activations per slice: large enough that a slice's matmuls run at full speed


def chunks(n: int, row_bytes: int, max_bytes: int = MAX_BYTES) -> Iterator[slice]:
    """Slices of `n` rows of `row_bytes` each, at most `max_bytes` a slice (at least one row)."""
    size = max(1, max_bytes // max(1, row_bytes))
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))
