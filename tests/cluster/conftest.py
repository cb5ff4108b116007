"""Fixtures of the passes that take many blocks at once (``LocalRuntime``'s whole-source and
run paths, on a GPU only), made to run on the CPU, for the tests of the tasks that offer them."""

import pytest

from mega_taxonomy.runtime import local


@pytest.fixture
def whole_on_cpu(monkeypatch):
    """LocalRuntime takes the whole-source path on the CPU too (there, only for a GPU's tensors);
    the passes made so are counted."""
    taken = []

    def resident(source, device):
        block = source.whole_block()
        taken.append(block is not None)
        return block

    monkeypatch.setattr(local, "resident", resident)
    return taken


@pytest.fixture
def runs_on_cpu(monkeypatch):
    """LocalRuntime takes host rows by runs of 2 blocks on the CPU too (there, only on a GPU);
    the passes made so are counted."""
    taken = []

    def run_blocks(source, device):
        size = 2 if getattr(source, "_array", None) is not None else None
        taken.append(size is not None)
        return size

    monkeypatch.setattr(local, "run_blocks", run_blocks)
    return taken
