"""The memory types the LM knows: ``ModelConfig.memory_type`` -> its class (memory_type.py).

Adding a memory type: write its file in models/ (a MemoryType subclass), import its class here and
add it to the tuple (docs/memory_types.md walks through an example)."""

from __future__ import annotations

from .compressive import CompressiveMemory
from .infinite import InfiniteMemory, StickyInfiniteMemory
from .memory_type import MemoryType
from .xl import XLMemory

MEMORY_TYPES: dict[str, type[MemoryType]] = {
    cls.name: cls
    for cls in (
        XLMemory,
        CompressiveMemory,
        InfiniteMemory,
        StickyInfiniteMemory,
    )
}


def memory_type_class(name: str) -> type[MemoryType]:
    """The class of memory type `name` (ValueError naming the known ones otherwise)."""
    if name not in MEMORY_TYPES:
        raise ValueError(f"memory_type must be one of {list(MEMORY_TYPES)}, got {name!r}")
    return MEMORY_TYPES[name]


def memory_labels() -> dict[str, str]:
    """{memory_type: display label}, for plots and tables."""
    return {name: cls.label for name, cls in MEMORY_TYPES.items()}
