"""Large arrays of a pass's state read by workers from a Store, instead of being broadcast.

A state (e.g. the centroids of a level) normally travels to the workers through the cluster's
object store. A level of millions of centroids is gigabytes: it is written once to a Store on
storage the workers share (the seed's "state on a DFS"), and the state carries a small
:class:`ArrayRef` in its place. Each worker resolves the refs once per pass, memory-mapping
local files (so the workers of a node share one copy in the page cache) and downloading
remote ones. Nothing else changes for tasks: they see a state of the same type holding arrays.
It lives with RayRuntime because only a runtime whose workers are other processes needs it.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import numpy as np

from mega_taxonomy.storage import Store
from mega_taxonomy.storage.schema import spill_file


@dataclass(frozen=True)
class ArrayRef:
    """Where a worker reads one array: a file of a Store and its checksum entry."""

    uri: str
    name: str
    entry: dict
    storage_options: dict | None = dataclasses.field(default=None, repr=False)  # credentials: never shown

    def load(self) -> np.ndarray:
        store = Store(self.uri, storage_options=self.storage_options)
        store.record(self.name, self.entry)  # put, not committed: the ref carries what the manifest would
        return store.get_array(self.name, mmap=True)


def _walk(obj, leaf, memo):
    """``obj`` with ``leaf(x)`` in place of every ndarray / ArrayRef inside dataclasses, tuples,
    lists, dicts and our own objects; unchanged objects are returned as they are (no copy), and an
    object met twice (a tree in the state and in its router) is converted once."""
    key = id(obj)
    if key in memo:
        return memo[key][1]
    out = _convert(obj, leaf, memo)
    memo[key] = (obj, out)  # obj kept alive, so that its id is not reused during the walk
    return out


def _convert(obj, leaf, memo):
    if isinstance(obj, (np.ndarray, ArrayRef)):
        return leaf(obj)
    if isinstance(obj, (tuple, list)):
        items = [_walk(x, leaf, memo) for x in obj]
        if all(a is b for a, b in zip(items, obj)):
            return obj
        return type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)
    if isinstance(obj, dict):
        items = {k: _walk(v, leaf, memo) for k, v in obj.items()}
        return obj if all(items[k] is obj[k] for k in obj) else type(obj)(items)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        names = [f.name for f in dataclasses.fields(obj)]
    elif type(obj).__module__.startswith("mega_taxonomy.") and hasattr(obj, "__dict__"):
        names = list(vars(obj))
    else:
        return obj
    values = {name: _walk(getattr(obj, name), leaf, memo) for name in names}
    if all(values[name] is getattr(obj, name) for name in names):
        return obj
    out = copy.copy(obj)
    for name, value in values.items():
        object.__setattr__(out, name, value)  # frozen dataclasses too; no __init__ re-run
    return out


def spill(state, store: Store, prefix: str, min_bytes: int, storage_options=None):
    """``state`` with every array of at least ``min_bytes`` written to ``store`` under ``prefix``
    and replaced by an ArrayRef; returns (state, names written).

    Examples
    --------
    >>> import tempfile
    >>> from mega_taxonomy.cluster.lloyd_pass import LloydState
    >>> state = LloydState(np.ones((1000, 8), np.float32))
    >>> light, names = spill(state, Store(tempfile.mkdtemp()), "pass-0", min_bytes=1 << 10)
    >>> type(light.centroids).__name__, names
    ('ArrayRef', ['pass-0/0000.npy'])
    >>> type(resolve(light).centroids).__name__
    'memmap'
    """
    names = []

    def leaf(array):
        if not isinstance(array, np.ndarray) or array.nbytes < min_bytes:
            return array
        name = spill_file(prefix, len(names))
        entry = store.put_array(name, array)
        names.append(name)
        return ArrayRef(store.uri, name, entry, storage_options)

    return _walk(state, leaf, {}), names


def resolve(state):
    """``state`` with every ArrayRef replaced by its array (memory-mapped where the file is local)."""
    return _walk(state, lambda x: x.load() if isinstance(x, ArrayRef) else x, {})
