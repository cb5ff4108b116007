"""What the command line's commands share wherever they are defined (``cli.py``, ``cli_index.py``,
``cli_knn.py``, ``web/``): the input's columns, the fsspec options of ``--storage-options`` (given
as JSON), the input as a source, and the answers of a search as a parquet file."""

from __future__ import annotations

import json

import click

options_option = click.option("--storage-options", default=None, help="fsspec options as JSON.")
column_option = click.option("--column", default=None, help="Vector column of parquet files (default: the only one).")
id_option = click.option("--id-column", default=None, help="Integer id column (default: row ordinals).")


def source(uri, column, id_column, on_invalid="raise", storage_options=None):
    """The input at ``uri`` as a VectorSource (imported when a command runs: ``--help`` stays quick)."""
    from ._estimator import as_source

    return as_source(uri, column=column, id_column=id_column, on_invalid=on_invalid, storage_options=storage_options)


def storage_options(text):
    """``--storage-options '{"client_kwargs": ...}'``: fsspec options as JSON (never logged)."""
    try:
        return json.loads(text) if text else None
    except json.JSONDecodeError as exc:  # the message must not echo the text: it may hold credentials
        raise click.BadParameter(f"not valid JSON ({exc.msg} at character {exc.pos})",
                                 param_hint="'--storage-options'") from None


def write_hits(output, distances, ids):
    """A search's (n, k) answers as one parquet file of rows ``(query, rank, id, distance)``."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    n, k = ids.shape
    pq.write_table(pa.table({"query": np.repeat(np.arange(n), k), "rank": np.tile(np.arange(k), n),
                             "id": ids.ravel(), "distance": distances.ravel()}), output)
