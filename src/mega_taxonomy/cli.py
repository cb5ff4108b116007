"""The ``mega-taxonomy`` command."""

from __future__ import annotations

import json
import logging

import click
import numpy as np

from . import __version__


def _source(uri, column, id_column, on_invalid="raise", storage_options=None):
    from .io import VectorSource

    return VectorSource(uri, column=column, id_column=id_column, on_invalid=on_invalid,
                        storage_options=storage_options)


def _options(text):
    """``--storage-options '{"client_kwargs": ...}'``: fsspec options as JSON (never logged)."""
    return json.loads(text) if text else None


column_option = click.option("--column", default=None, help="Vector column of parquet files (default: the only one).")
id_option = click.option("--id-column", default=None, help="Integer id column (default: row ordinals).")
options_option = click.option("--storage-options", default=None, help="fsspec options as JSON.")


@click.group()
@click.version_option(__version__, prog_name="mega-taxonomy")
@click.option("-v", "--verbose", count=True, help="-v for progress logs, -vv for debug.")
def main(verbose):
    """Organize very large collections of embedding vectors."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@main.group()
def data():
    """Look at vector data."""


@data.command("inspect")
@click.argument("uri")
@column_option
@id_option
@options_option
def data_inspect(uri, column, id_column, storage_options):
    """Files, rows, dimension, dtype and invalid rows of URI (one pass over the data)."""
    source = _source(uri, column, id_column, on_invalid="skip", storage_options=_options(storage_options))
    click.echo(f"files: {len(source.uris)}")
    for shard_uri in source.uris[:20]:
        click.echo(f"  {shard_uri}")
    if len(source.uris) > 20:
        click.echo(f"  ... {len(source.uris) - 20} more")
    click.echo(f"rows: {len(source)}")
    click.echo(f"dim: {source.dim}")
    click.echo(f"dtype: {source.dtype}")
    click.echo(f"shards: {len(source.shards)}")
    for _ in source.blocks():  # validation happens while reading
        pass
    click.echo(f"invalid rows: {sum(source.skipped.values())}")
    for name, count in source.skipped.items():
        click.echo(f"  {name}: {count}")


@main.group()
def kmeans():
    """Flat k-means."""


@kmeans.command("fit")
@click.argument("uri")
@click.option("--k", "n_clusters", type=int, required=True, help="Number of clusters.")
@click.option("--storage", required=True, help="Where to write the model and assignments (path or URI).")
@click.option("--max-iter", type=int, default=20, show_default=True)
@click.option("--tol", type=float, default=1e-4, show_default=True)
@click.option("--metric", type=click.Choice(["euclidean", "cosine"]), default="euclidean", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--sample-size", type=int, default=None)
@column_option
@id_option
@options_option
def kmeans_fit(uri, n_clusters, storage, max_iter, tol, metric, seed, device, sample_size, column, id_column,
               storage_options):
    """Fit k-means on URI; write centroids, counts and every row's assignment to --storage."""
    from .cluster import KMeans

    options = _options(storage_options)
    source = _source(uri, column, id_column, storage_options=options)
    km = KMeans(n_clusters, max_iter=max_iter, tol=tol, metric=metric, random_state=seed, device=device,
                sample_size=sample_size).fit(source)
    written = km.save(storage, storage_options=options, assignments=source)
    click.echo(f"k={n_clusters} iterations={km.n_iter_} inertia={km.inertia_:.6g} rows={int(km.counts_.sum())}")
    click.echo(f"cluster sizes: min={km.counts_.min()} median={int(np.median(km.counts_))} max={km.counts_.max()}")
    click.echo(f"wrote {len(written['files'])} files to {storage}")


@main.command()
@click.option("--k", "n_clusters", type=int, default=64, show_default=True)
@click.option("--show", type=int, default=8, show_default=True, help="Clusters to print.")
@click.option("--words", "n_words", type=int, default=8, show_default=True, help="Words per cluster.")
@click.option("--max-iter", type=int, default=20, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--limit", type=int, default=None, help="Use only the first N words (quick runs).")
def demo(n_clusters, show, n_words, max_iter, seed, device, limit):
    """Cluster the 400k GloVe 6B words and print clusters with the words nearest their centroid."""
    from .demo import run_demo

    summaries, km, seconds = run_demo(n_clusters, show, n_words, max_iter, seed, device, limit)
    n = int(km.counts_.sum())
    click.echo(f"k-means (cosine) of {n} GloVe words into {n_clusters} clusters: "
               f"{km.n_iter_} iterations in {seconds:.1f} s")
    for s in summaries:
        click.echo(f"cluster {s.cluster:3d}  {s.size:6d} words: {', '.join(s.words)}")
