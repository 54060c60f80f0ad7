"""Shared test setup."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models on a shared 2-core machine: one torch thread avoids oversubscription stalls
    (the module's tests run with it; the previous setting is restored afterwards)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def sticky_draws(monkeypatch):
    """Histograms (8 bins of [0, 1]) of row 0 of every sample-position draw of sticky sampling:
    a spy on memory.sticky_positions, which update_memory calls."""
    from infinite_former import memory

    used = []
    original = memory.sticky_positions

    def spy(bin_mass, num_samples, generator=None):
        pos = original(bin_mass, num_samples, generator)
        used.append(torch.histc(pos[0].float(), bins=8, min=0, max=1).numpy())
        return pos

    monkeypatch.setattr(memory, "sticky_positions", spy)
    return used
