"""CountingRuntime: a runtime that counts the passes over data made through it.

Passes are what a fit costs at scale (each reads every row), so a fit reports how many it made
(a taxonomy's ``stats_["passes"]``). The count includes the passes of the drivers run through
``drive``, wherever they ran: on a collective runtime the driver runs on every worker, and the
count comes back with rank 0's result.
"""

from __future__ import annotations


class CountingRuntime:
    """Counts the passes over data that a fit makes (they are what costs at scale), those of the
    drivers it runs (``drive``) included, wherever they ran."""

    def __init__(self, runtime):
        self.runtime, self.passes = runtime, 0

    def map_reduce(self, source, task, state, *, desc=None):
        self.passes += 1
        return self.runtime.map_reduce(source, task, state, desc=desc)

    def drive(self, fn, *args, **kwargs):
        """``runtime.drive(fn, ...)`` (on a collective runtime: on every worker), its passes counted."""
        result, passes = self.runtime.drive(counted, fn, *args, **kwargs)
        self.passes += passes
        return result

    @property
    def device(self):
        return self.runtime.device

    @property
    def in_process(self):
        return self.runtime.in_process

    @property
    def leader(self):
        return getattr(self.runtime, "leader", True)


def counted(fn, *args, runtime, **kwargs):
    """``(fn(*args, runtime=..., **kwargs), passes it made)``: a driver run by ``runtime.drive``."""
    counting = CountingRuntime(runtime)
    return fn(*args, runtime=counting, **kwargs), counting.passes
