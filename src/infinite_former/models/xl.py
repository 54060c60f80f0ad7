"""Transformer-XL (Dai et al. 2019): the short-term memory alone, the mems of the last mem_len
tokens per layer. Under the equal budget its STM holds mem_len + N vectors."""

from __future__ import annotations

from typing import ClassVar

from .memory_type import MemoryType


class XLMemory(MemoryType):
    """No memory beyond the STM: the protocol's defaults (memory_type.py)."""

    name: ClassVar[str] = "xl"
    label: ClassVar[str] = "Transformer-XL"
    budget_rule: ClassVar[str] = "xl: mem_len + N"

    @classmethod
    def equal_budget(cls, mem_len: int, num_basis: int) -> dict[str, int]:
        return {"mem_len": mem_len + num_basis}  # all of the budget goes to the STM
