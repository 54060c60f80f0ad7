"""Data for the ∞-former: the sorting task (sorting.py); long-document corpora live beside it."""

from .sorting import (
    ArraySource,
    SortingConfig,
    SortingGenerator,
    SortingStream,
    load_sequences,
    materialize,
    num_segments,
    save_sequences,
    sort_by_count,
)

__all__ = [
    "ArraySource",
    "SortingConfig",
    "SortingGenerator",
    "SortingStream",
    "load_sequences",
    "materialize",
    "num_segments",
    "save_sequences",
    "sort_by_count",
]
