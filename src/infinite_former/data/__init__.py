"""The data layer: segments and streams (segments.py), the sorting task (sorting.py), long-document
corpora and lanes (text.py), tokenizers (tokenizer.py). Imports only the core utilities: never a
model, the trainer or an experiment."""

from .segments import EvalFactory, Segment, SegmentStream, Shard, StreamFactory
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
    "EvalFactory",
    "Segment",
    "SegmentStream",
    "Shard",
    "StreamFactory",
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
