"""``mega-taxonomy knn build|query``: exact k nearest neighbours from the command line (registered
by ``cli.py``; errors become one line and exit status 2 there)."""

from __future__ import annotations

import click
import numpy as np

from .cli_options import column_option, id_option, options_option, write_hits
from .cli_options import source as _source
from .cli_options import storage_options as _options
from .errors import ConfigError, DataError


@click.group()
def knn():
    """Exact k nearest neighbours of low-dimensional points (a kd-tree)."""


@knn.command("build")
@click.argument("uri")
@click.option("--storage", required=True, help="Where to write the tree (path or URI).")
@click.option("--leafsize", type=int, default=32, show_default=True)
@click.option("--boxsize", default=None, help="Periodic box: one side for every dimension, or one per dimension "
                                              "(comma-separated).")
@column_option
@id_option
@options_option
def knn_build(uri, storage, leafsize, boxsize, column, id_column, storage_options):
    """Build the kd-tree of the points of URI (parquet / npy) and write it to --storage."""
    import time

    from .index import KDTree

    options = _options(storage_options)
    try:
        box = None if boxsize is None else [float(v) for v in boxsize.split(",")]
    except ValueError:
        raise click.BadParameter(f"not a number or a list of numbers: {boxsize!r}", param_hint="'--boxsize'") from None
    if leafsize < 1:
        raise ConfigError(f"--leafsize must be at least 1, not {leafsize}")
    start = time.perf_counter()
    tree = KDTree(_source(uri, column, id_column, storage_options=options), leafsize=leafsize,
                  boxsize=None if box is None else box[0] if len(box) == 1 else box)
    seconds = time.perf_counter() - start
    manifest = tree.save(storage, storage_options=options)
    click.echo(f"points={tree.n} dim={tree.m} nodes={tree.size} read and built in {seconds:.2f} s")
    click.echo(f"wrote {len(manifest['files'])} files to {storage}")


@knn.command("query")
@click.argument("storage")
@click.argument("queries")
@click.option("--k", type=int, default=10, show_default=True)
@click.option("--p", "p", type=click.Choice(["1", "2", "inf"]), default="2", show_default=True)
@click.option("--distance-upper-bound", type=float, default=float("inf"))
@click.option("--output", required=True, help="Parquet file of (query, rank, id, distance); id -1 where missing.")
@column_option
@options_option
def knn_query(storage, queries, k, p, distance_upper_bound, output, column, storage_options):
    """The K nearest points of the tree at STORAGE to each point of QUERIES (ids of its source)."""
    from .index import KDTree

    if k < 1:
        raise ConfigError(f"--k must be at least 1, not {k}")
    options = _options(storage_options)
    tree = KDTree.load(storage, storage_options=options)
    source = _source(queries, column, None, storage_options=options)
    if source.dim != tree.m:
        raise DataError(f"queries have {source.dim} dimensions, the tree {tree.m}", file=", ".join(source.uris[:3]))
    q = np.concatenate([np.asarray(b.vectors, dtype=np.float64) for b in source.blocks()])
    d, rows = tree.query(q, k=[*range(1, k + 1)], p=float(p), distance_upper_bound=distance_upper_bound)
    ids = np.append(tree.ids, -1)[rows]
    write_hits(output, d, ids)
    click.echo(f"{len(q)} queries, k={k}; wrote {output}")
