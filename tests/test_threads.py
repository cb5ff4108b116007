"""The process's CPU pool: results in order, and no deadlock when its own tasks use it."""

from concurrent.futures import ThreadPoolExecutor

from mega_taxonomy import threads


def test_map_in_threads_keeps_the_order_and_nests():
    """Every pool thread busy with a task that maps again over the pool: the inner maps run in
    their own thread instead of waiting for a free one (which would never come)."""
    n = threads.cpu_threads()
    assert threads.map_in_threads(lambda i: i * i, range(50)) == [i * i for i in range(50)]
    def inner(i):
        return sum(threads.map_in_threads(lambda j: i + j, range(10)))

    outer = threads.map_in_threads(inner, range(4 * n))
    assert outer == [10 * i + 45 for i in range(4 * n)]
    seen = []
    threads.parallel_map(lambda i: threads.parallel_map(seen.append, [i]), range(3 * n))
    assert sorted(seen) == list(range(3 * n))


def test_maps_from_several_threads_share_the_pool():
    with ThreadPoolExecutor(3) as callers:
        results = list(callers.map(lambda c: threads.map_in_threads(lambda i: (c, i), range(20)), range(3)))
    assert results == [[(c, i) for i in range(20)] for c in range(3)]
