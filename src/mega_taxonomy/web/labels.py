"""Labels for the rows of a taxonomy: a text per id, from a parquet table the user gives.

The table joins on its ``id`` column (int) when it has one, else on the row ordinal (row ``i`` is
id ``i``: the ids a fit gives rows read without an id column, e.g. the GloVe demo's words).
"""

from __future__ import annotations

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import DataError


class Labels:
    """A label per id.

    Parameters
    ----------
    uri : str
        Parquet file (local path or fsspec URI).
    column : str
        The label column (any type; shown as text).
    storage_options : dict, optional

    Examples
    --------
    >>> import tempfile, os, pyarrow as pa, pyarrow.parquet as pq
    >>> path = os.path.join(tempfile.mkdtemp(), "words.parquet")
    >>> pq.write_table(pa.table({"word": ["apple", "Pear", "apricot"]}), path)
    >>> labels = Labels(path, "word")
    >>> labels.lookup([2, 0, 7]), labels.find("pear", 5), labels.find("ap", 5)
    (['apricot', 'apple', None], [1], [0, 2])
    """

    def __init__(self, uri, column, *, storage_options=None):
        self.uri, self.column = str(uri), column
        try:
            fs, path = fsspec.core.url_to_fs(self.uri, **(storage_options or {}))
            schema = pq.read_schema(path, filesystem=fs)
            if column not in schema.names:
                raise DataError(f"{self.uri}: no column {column!r} (columns: {', '.join(schema.names)})",
                                column=column)
            names = [column] + (["id"] if "id" in schema.names and column != "id" else [])
            table = pq.read_table(path, columns=names, filesystem=fs)
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"{self.uri}: cannot read the labels table: {exc}") from exc
        self.text = pc.cast(table.column(column).combine_chunks(), pa.string())
        self.lower = pc.utf8_lower(self.text)
        self.keys = None  # None: ids are row ordinals
        if "id" in names[1:]:
            ids = table.column("id")
            if not pa.types.is_integer(ids.type):
                raise DataError(f"{self.uri}: column 'id' must hold integers, not {ids.type}", column="id")
            ids = ids.to_numpy().astype(np.int64)
            order = np.argsort(ids, kind="stable")
            self.keys, self.text, self.lower = ids[order], self.text.take(order), self.lower.take(order)

    def __len__(self):
        return len(self.text)

    def _rows(self, ids: np.ndarray) -> np.ndarray:
        """Row of each id, -1 where it has no label."""
        ids = np.asarray(ids, dtype=np.int64)
        if self.keys is None:
            return np.where((ids >= 0) & (ids < len(self.text)), ids, -1)
        at = np.minimum(np.searchsorted(self.keys, ids), max(len(self.keys) - 1, 0))
        return np.where((len(self.keys) > 0) & (self.keys[at] == ids), at, -1) if len(self.keys) else -np.ones_like(ids)

    def lookup(self, ids) -> list[str | None]:
        """The label of each id (None where the table has none)."""
        rows = self._rows(np.asarray(ids))
        found = self.text.take(pa.array(np.maximum(rows, 0))).to_pylist() if len(self.text) else [None] * len(rows)
        return [text if row >= 0 else None for text, row in zip(found, rows)]

    def find(self, query: str, limit: int) -> list[int]:
        """Ids whose label equals ``query`` (case-insensitive), then those that start with it."""
        query = query.lower()
        if not query:
            return []
        exact = np.flatnonzero(_mask(pc.equal(self.lower, query)))
        rows = list(exact[:limit])
        if len(rows) < limit:
            seen = set(rows)
            prefix = np.flatnonzero(_mask(pc.starts_with(self.lower, query)))
            rows += [r for r in prefix[: limit + len(rows)] if r not in seen][: limit - len(rows)]
        return [int(self.keys[r]) if self.keys is not None else int(r) for r in rows]


def _mask(matches: pa.Array) -> np.ndarray:
    """A boolean numpy mask of a pyarrow comparison, missing labels counted as no match."""
    return pc.fill_null(matches, False).to_numpy(zero_copy_only=False)
