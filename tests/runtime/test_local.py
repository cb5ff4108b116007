"""LocalRuntime: block-order reduction, the worker pool, the CPU thread setting."""

import doctest
from dataclasses import dataclass

import numpy as np
import torch
from pool_worker import Counter

from mega_taxonomy.io import BLOCK_ROWS, VectorSource
from mega_taxonomy.runtime import Deferred, LocalRuntime, cpu_threads, finished, local


@dataclass
class Order:
    """A partial that is not commutative: it records the order it was added in."""

    blocks: tuple

    def __add__(self, other):
        return Order(self.blocks + other.blocks)


def test_partials_are_added_in_block_order():
    source = VectorSource(np.zeros((3 * BLOCK_ROWS + 5, 2), dtype=np.float32))
    total = LocalRuntime(device="cpu", progress=False).map_reduce(source, lambda b, s, d: Order((b.index,)), None)
    assert total.blocks == (0, 1, 2, 3)


@dataclass
class InPlace(Order):
    """Order that adds in place: the runtime's running total uses it, nothing else does."""

    def __iadd__(self, other):
        self.blocks += other.blocks
        return self


def test_running_totals_add_in_place_but_never_into_a_tasks_arrays():
    array = np.arange(2 * BLOCK_ROWS + 5, dtype=np.float32)[:, None]
    source = VectorSource(array)
    firsts = []

    def task(block, state, device):
        firsts.append(InPlace((block.index,)))
        return firsts[-1]

    total = LocalRuntime(device="cpu", progress=False, reduce_blocks=2).map_reduce(source, task, None)
    assert total.blocks == (0, 1, 2) and total is firsts[0]  # the first block's partial, updated in place
    assert firsts[2].blocks == (2,)  # the second unit's total was block 2 alone: added, not changed
    data = array.copy()

    def first_row(block, state, device):
        assert np.shares_memory(block.vectors, array)
        return block.vectors[:1, 0]

    rows = LocalRuntime(device="cpu", progress=False).map_reduce(source, first_row, None)
    assert rows[0] == sum(data[i * BLOCK_ROWS, 0] for i in range(3))
    np.testing.assert_array_equal(array, data)  # the first block's row, a view, is unchanged
    assert LocalRuntime(device="cpu", progress=False).map_reduce(source, lambda b, s, d: [b.index], None) == [0, 1, 2]


def test_deferred_partials_are_finished_after_the_next_blocks_task():
    """A task may return a Deferred (its host half, waiting for the device): the runtime finishes
    it once the next block's task has run, and still adds the partials in block order."""
    events = []

    def task(block, state, device):
        events.append(("task", block.index))
        if block.index in (1, 2):
            return Deferred(lambda: events.append(("finish", block.index)) or Order((block.index,)))
        return Order((block.index,))

    source = VectorSource(np.zeros((3 * BLOCK_ROWS + 5, 2), dtype=np.float32))
    total = LocalRuntime(device="cpu", progress=False).map_reduce(source, task, None)
    assert total.blocks == (0, 1, 2, 3)
    assert events == [("task", 0), ("task", 1), ("task", 2), ("finish", 1), ("task", 3), ("finish", 2)]
    assert finished(Deferred(lambda: Order((7,)))) == Order((7,)) and finished(Order((8,))) == Order((8,))


def test_tasks_get_the_state_and_the_device():
    source = VectorSource(np.ones((10, 3), dtype=np.float32))
    seen = LocalRuntime(device="cpu").map_reduce(source, lambda b, s, d: (s, str(d)), "state")
    assert seen == ("state", "cpu")


def test_worker_pool_keeps_state_per_worker():
    with LocalRuntime(device="cpu").pool(Counter, n_workers=3) as pool:
        assert pool.size == 3
        assert pool.broadcast("bump", 1) == [(0, 1), (1, 1), (2, 1)]
        assert pool.call(1, "bump", 5) == (1, 6)


def test_cpu_threads_is_restored():
    before = torch.get_num_threads()
    with cpu_threads("cpu", 1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_docstring_examples_run():
    assert doctest.testmod(local).failed == 0
