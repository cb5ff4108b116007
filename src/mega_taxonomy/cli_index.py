"""``mega-taxonomy index build|search``: an IVF index from the command line (registered by
``cli.py``; errors become one line and exit status 2 there)."""

from __future__ import annotations

import click
import numpy as np

from .cli_options import column_option, id_option, options_option, write_hits
from .cli_options import storage_options as _options
from .errors import ConfigError


@click.group()
def index():
    """IVF index (k-means or GMM quantizer, multi-assignment)."""


@index.command("build")
@click.argument("uri")
@click.option("--storage", required=True, help="Where to write the index (path or URI).")
@click.option("--nlist", type=int, required=True, help="Number of lists.")
@click.option("--quantizer", type=click.Choice(["kmeans", "gmm"]), default="kmeans", show_default=True)
@click.option("--assignment", type=click.Choice(["single", "multi"]), default="single", show_default=True)
@click.option("--max-assign", type=int, default=2, show_default=True)
@click.option("--threshold", type=float, default=None, help="Default: 1/nlist (gmm), 1.1 (kmeans spilling).")
@click.option("--metric", type=click.Choice(["euclidean", "cosine", "inner_product"]), default="euclidean",
              show_default=True)
@click.option("--train-size", type=int, default=None, help="Rows sampled for training (default: all).")
@click.option("--max-iter", type=int, default=20, show_default=True)
@click.option("--gmm-iter", type=int, default=10, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@column_option
@id_option
@options_option
def build(uri, storage, nlist, quantizer, assignment, max_assign, threshold, metric, train_size, max_iter, gmm_iter,
          seed, column, id_column, storage_options):
    """Train an IVF index on (a sample of) URI, add every row, write it to --storage."""
    from ._estimator import as_source
    from .index import IVFIndex

    options = _options(storage_options)
    source = as_source(uri, column=column, id_column=id_column, storage_options=options)
    n = len(source)
    if train_size is not None and train_size < 1:
        raise ConfigError(f"--train-size must be positive, got {train_size}")
    rows = np.arange(n) if train_size is None or train_size >= n else \
        np.sort(np.random.default_rng(seed).choice(n, train_size, replace=False))
    ivf = IVFIndex(nlist, quantizer=quantizer, assignment=assignment, max_assign=max_assign, threshold=threshold,
                   metric=metric, max_iter=max_iter, gmm_iter=gmm_iter, random_state=seed)
    ivf.train(np.asarray(source.take(rows))).add(source)
    written = ivf.save(storage, storage_options=options)
    click.echo(f"nlist={nlist} quantizer={quantizer} assignment={assignment} vectors={ivf.ntotal} "
               f"stored rows={len(ivf.lists_)} bytes per vector={ivf.bytes_per_vector:.1f}")
    click.echo(f"wrote {len(written['files'])} files to {storage}")


@index.command("search")
@click.argument("storage")
@click.argument("queries")
@click.option("--k", type=int, default=10, show_default=True)
@click.option("--nprobe", type=int, default=8, show_default=True)
@click.option("--output", required=True, help="Parquet file of (query, rank, id, distance).")
@column_option
@options_option
def search(storage, queries, k, nprobe, output, column, storage_options):
    """The K nearest indexed vectors of each vector of QUERIES."""
    from ._estimator import as_source
    from .index import IVFIndex

    options = _options(storage_options)
    ivf = IVFIndex.load(storage, storage_options=options)
    source = as_source(queries, column=column, storage_options=options)
    q = np.concatenate([np.asarray(b.vectors) for b in source.blocks()])
    d, ids, stats = ivf.search(q, k, nprobe, return_stats=True)
    write_hits(output, d, ids)
    click.echo(f"{len(q)} queries, {stats.distances.mean():.0f} distances per query "
               f"({stats.coarse.mean():.0f} coarse + {stats.fine.mean():.0f} fine); wrote {output}")
