"""Inverted lists stored contiguously (CSR): the rows of list ``l`` are
``vectors[offsets[l]:offsets[l + 1]]`` with their ``ids``, so a probed list is one slice and
every list is scanned by one dense loop. A vector assigned to several lists (multi-assignment)
is stored once per list."""

from __future__ import annotations

import numpy as np

from ..ops.probe import row_terms


class InvertedLists:
    """CSR lists of float32 (or float64) vectors with int64 ids.

    Parameters
    ----------
    nlist, dim : int
    vectors, ids, offsets : ndarray, optional
        An existing layout (a loaded index); empty lists otherwise.
    """

    def __init__(self, nlist: int, dim: int, vectors=None, ids=None, offsets=None, dtype=np.float32):
        self.nlist, self.dim = nlist, dim
        self.vectors = np.empty((0, dim), dtype) if vectors is None else vectors
        self.ids = np.empty(0, np.int64) if ids is None else ids
        self.offsets = np.zeros(nlist + 1, np.int64) if offsets is None else np.asarray(offsets, np.int64)
        self._terms, self._by_id = {}, None

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        """Stored rows, copies of multi-assigned vectors included."""
        return len(self.ids)

    def labels(self) -> np.ndarray:
        """The list of every stored row."""
        return np.repeat(np.arange(self.nlist), self.sizes)

    def extend(self, parts: list) -> None:
        """Append ``(lists (n, m), vectors (n, d), ids (n,))`` parts (-1: no list). Within a list,
        rows keep the order they were added in."""
        if not parts:
            return
        labels = [self.labels()]
        vectors, ids = [np.asarray(self.vectors)], [np.asarray(self.ids)]
        for lists, v, i in parts:
            take = lists >= 0
            rows = np.nonzero(take)[0]  # row-major: a row's copies side by side
            labels.append(lists[take])
            vectors.append(np.asarray(v, self.vectors.dtype)[rows])
            ids.append(np.asarray(i, np.int64)[rows])
        labels = np.concatenate(labels)
        order = np.argsort(labels, kind="stable")
        self.vectors = np.ascontiguousarray(np.concatenate(vectors)[order])
        self.ids = np.concatenate(ids)[order]
        self.offsets = np.concatenate([[0], np.cumsum(np.bincount(labels, minlength=self.nlist))]).astype(np.int64)
        self._terms, self._by_id = {}, None

    def remove(self, ids) -> int:
        """Drop every copy of the given ids; return how many distinct ids were found."""
        ids = np.unique(np.asarray(ids, np.int64))
        gone = np.isin(self.ids, ids)
        found = len(np.unique(self.ids[gone]))
        if found:
            keep = ~gone
            labels = self.labels()[keep]
            self.vectors = np.ascontiguousarray(np.asarray(self.vectors)[keep])
            self.ids = np.asarray(self.ids)[keep]
            self.offsets = np.concatenate([[0], np.cumsum(np.bincount(labels, minlength=self.nlist))]).astype(np.int64)
            self._terms, self._by_id = {}, None
        return found

    def reconstruct(self, ids) -> np.ndarray:
        """The stored vector of every id (its first copy); KeyError naming a missing id."""
        if self._by_id is None:
            order = np.argsort(self.ids, kind="stable")
            self._by_id = (np.asarray(self.ids)[order], order)
        sorted_ids, order = self._by_id
        ids = np.asarray(ids, np.int64).reshape(-1)
        at = np.searchsorted(sorted_ids, ids)
        missing = (at >= len(sorted_ids)) | (sorted_ids[np.minimum(at, len(sorted_ids) - 1)] != ids)
        if missing.any():
            raise KeyError(f"id {int(ids[np.argmax(missing)])} is not in the index")
        return np.asarray(self.vectors)[order[at]]

    def terms(self, metric: str):
        """The per-row distance terms of ``ops.probe`` (kept until the lists change)."""
        if metric not in self._terms:
            self._terms[metric] = row_terms(self.vectors, metric)
        return self._terms[metric]

    def nbytes(self) -> int:
        """Bytes of the stored lists (vectors, ids, offsets)."""
        return int(np.asarray(self.vectors).nbytes + np.asarray(self.ids).nbytes + self.offsets.nbytes)
