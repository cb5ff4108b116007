"""The ``mega-taxonomy`` command."""

from __future__ import annotations

import contextlib
import logging
import shlex
import sys
import traceback

import click
import numpy as np

from . import __version__
from .cli_options import column_option, id_option, options_option, write_hits
from .cli_options import source as _source
from .cli_options import storage_options as _options
from .errors import ConfigError, DataError, MegaTaxonomyError
from .web.commands import report, serve




def ray_option(command):
    command = click.option("--ray-workers", type=int, default=None,
                           help="Workers on the Ray cluster (default: one per GPU, else per CPU slot).")(command)
    return click.option("--ray", "ray_address", default=None, metavar="ADDRESS",
                        help="Run the passes on the Ray cluster at ADDRESS (host:port, or 'auto'); "
                             "default: in this process.")(command)


@contextlib.contextmanager
def _runtime(ray_address, workers):
    """None (the local runtime), or a RayRuntime attached to a running cluster whose workers stop
    with the command."""
    if ray_address is None:
        yield None
        return
    from .runtime.ray import RayRuntime

    runtime = RayRuntime(address=ray_address, num_workers=workers)
    try:
        yield runtime
    finally:
        runtime.close()


# Exit statuses: 2 for what the user can fix in the command (bad input data, bad parameters; click
# uses 2 for usage errors too), 1 for failures of storage or of the run itself.
EXIT_BAD_INPUT, EXIT_FAILURE = 2, 1


class _Main(click.Group):
    """The command group: an error of a command is one line on stderr and an exit status, not a
    traceback (``--debug`` prints that too)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Abort, click.exceptions.Exit):
            raise
        except Exception as exc:
            if ctx.params.get("debug"):
                traceback.print_exc()
            # One line: the message names the file, row and column (DataError), the URI (StorageError)
            # or the parameter (ConfigError); messages of other libraries may span lines.
            message = " ".join(str(exc).split()) or type(exc).__name__
            kind = "" if isinstance(exc, MegaTaxonomyError) else f"{type(exc).__name__}: "
            click.echo(f"Error: {kind}{message}", err=True)
            ctx.exit(EXIT_BAD_INPUT if isinstance(exc, (DataError, ConfigError)) else EXIT_FAILURE)


@click.group(cls=_Main)
@click.version_option(__version__, prog_name="mega-taxonomy")
@click.option("-v", "--verbose", count=True, help="-v for progress logs, -vv for debug.")
@click.option("--debug", is_flag=True, help="On an error, print the full traceback too.")
def main(verbose, debug):
    """Organize very large collections of embedding vectors.

    Exit status: 0 on success, 2 for bad input data or parameters, 1 for storage and other failures.
    """
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if verbose == 0 and not sys.stderr.isatty():
        # Progress bars show only on a terminal (tqdm's disable=None); in a log, a fit says where it
        # is with a line per level instead.
        logging.getLogger("mega_taxonomy.taxonomy").setLevel(logging.INFO)


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
@ray_option
def kmeans_fit(uri, n_clusters, storage, max_iter, tol, metric, seed, device, sample_size, column, id_column,
               storage_options, ray_address, ray_workers):
    """Fit k-means on URI; write centroids, counts and every row's assignment to --storage."""
    from .cluster import KMeans

    options = _options(storage_options)
    source = _source(uri, column, id_column, storage_options=options)
    with _runtime(ray_address, ray_workers) as runtime:
        km = KMeans(n_clusters, max_iter=max_iter, tol=tol, metric=metric, random_state=seed, device=device,
                    sample_size=sample_size, runtime=runtime).fit(source)
    written = km.save(storage, storage_options=options, assignments=source)
    click.echo(f"k={n_clusters} iterations={km.n_iter_} inertia={km.inertia_:.6g} rows={int(km.counts_.sum())}")
    click.echo(f"cluster sizes: min={km.counts_.min()} median={int(np.median(km.counts_))} max={km.counts_.max()}")
    click.echo(f"wrote {len(written['files'])} files to {storage}")


@main.group()
def gmm():
    """Gaussian mixtures."""


@gmm.command("fit")
@click.argument("uri")
@click.option("--k", "n_components", type=int, required=True, help="Number of components.")
@click.option("--storage", required=True, help="Where to write the model and assignments (path or URI).")
@click.option("--covariance-type", type=click.Choice(["full", "tied", "diag", "spherical"]), default="diag",
              show_default=True)
@click.option("--max-iter", type=int, default=100, show_default=True)
@click.option("--tol", type=float, default=1e-3, show_default=True)
@click.option("--reg-covar", type=float, default=1e-6, show_default=True)
@click.option("--n-init", type=int, default=1, show_default=True)
@click.option("--init", "init_params", type=click.Choice(["kmeans", "k-means++", "random", "random_from_data"]),
              default="kmeans", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@column_option
@id_option
@options_option
@ray_option
def gmm_fit(uri, n_components, storage, covariance_type, max_iter, tol, reg_covar, n_init, init_params, seed, device,
            column, id_column, storage_options, ray_address, ray_workers):
    """Fit a Gaussian mixture on URI by EM; write its weights, means, covariances and every row's
    component (of highest responsibility) to --storage."""
    from .cluster import GaussianMixture

    options = _options(storage_options)
    source = _source(uri, column, id_column, storage_options=options)
    with _runtime(ray_address, ray_workers) as runtime:
        gm = GaussianMixture(n_components, covariance_type=covariance_type, max_iter=max_iter, tol=tol,
                             reg_covar=reg_covar, n_init=n_init, init_params=init_params, random_state=seed,
                             device=device, runtime=runtime).fit(source)
    written = gm.save(storage, storage_options=options, assignments=source)
    click.echo(f"k={n_components} iterations={gm.n_iter_} converged={gm.converged_} "
               f"lower_bound={gm.lower_bound_:.6g} rows={len(source)}")
    click.echo(f"weights: min={gm.weights_.min():.4g} max={gm.weights_.max():.4g}")
    click.echo(f"wrote {len(written['files'])} files to {storage}")


def _branching(text):
    try:
        return [int(b) for b in text.split(",")]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not one int or a comma-separated list of ints",
                                 param_hint="'--branching'") from None


@main.command()
@click.argument("input")
@click.option("--storage", required=True, help="Store of the taxonomy (path or URI); a finished fit there is reused.")
@click.option("--levels", "n_levels", type=int, default=3, show_default=True)
@click.option("--branching", default="64,16,16", show_default=True, help="Children per node: one int, or one per level.")
@click.option("--max-iter", type=int, default=20, show_default=True)
@click.option("--tol", type=float, default=1e-4, show_default=True)
@click.option("--metric", type=click.Choice(["euclidean", "cosine"]), default="euclidean", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--min-cluster-size", type=int, default=1, show_default=True)
@click.option("--output", default=None, help="Also write (id, path, distance) parquet parts here.")
@click.option("--no-search-index", is_flag=True, help="Do not keep the vectors grouped by leaf for search.")
@click.option("--balance", type=click.Choice(["split", "penalty"]), default=None,
              help="Even out node sizes: split big nodes and merge tiny ones, or size-penalised assignment.")
@click.option("--partition-level", type=int, default=None,
              help="Fit the levels from this one down subtree by subtree, from rows written once by node.")
@column_option
@id_option
@options_option
@ray_option
def fit(input, storage, n_levels, branching, max_iter, tol, metric, seed, device, min_cluster_size, output,
        no_search_index, balance, partition_level, column, id_column, storage_options, ray_address, ray_workers):
    """Fit a taxonomy on INPUT (resumes an interrupted fit with the same arguments)."""
    from .taxonomy import TaxonomyEngine

    factors = _branching(branching)
    with _runtime(ray_address, ray_workers) as runtime:
        engine = TaxonomyEngine(n_levels=n_levels, branching_factor=factors[0] if len(factors) == 1 else factors,
                                storage_uri=storage, max_iter=max_iter, tol=tol, metric=metric, random_state=seed,
                                device=device, min_cluster_size=min_cluster_size, column=column,
                                id_column=id_column, storage_options=_options(storage_options),
                                search_index=not no_search_index, balance=balance, partition_level=partition_level,
                                runtime=runtime)
        engine.fit(input, output=output)
    _echo_inspect(engine)


def _echo_inspect(engine):
    stats = engine.stats_
    click.echo(f"levels: {engine.tree_.n_levels}  passes: {stats.get('passes')}  seconds: {stats.get('seconds', 0):.1f}")
    for level, (tree_level, info) in enumerate(zip(engine.tree_.levels, stats["levels"])):
        im = info["imbalance"]
        click.echo(f"level {level}: {tree_level.n_nodes} nodes, sizes min/median/max {im['min']}/{im['median']:g}/"
                   f"{im['max']}, max/mean {im['max_over_mean']:.2f}, entropy {im['entropy']:.3f}, gini "
                   f"{im['gini']:.3f}, {info['iterations']} iterations, {info['seconds']:.1f} s")


@main.command()
@click.argument("storage")
@options_option
def inspect(storage, storage_options):
    """Nodes per level, sizes, imbalance, iterations and timings of a fitted taxonomy."""
    from .taxonomy import TaxonomyEngine

    _echo_inspect(TaxonomyEngine.load(storage, storage_options=_options(storage_options)))


@main.command()
@click.argument("storage")
@click.argument("input")
@click.option("--output", required=True, help="Where to write (id, path, distance) parquet parts.")
@click.option("--beam", type=int, default=1, show_default=True)
@click.option("--device", default="auto", show_default=True)
@column_option
@id_option
@options_option
@ray_option
def predict(storage, input, output, beam, device, column, id_column, storage_options, ray_address, ray_workers):
    """Paths of the vectors of INPUT in the taxonomy at STORAGE."""
    from .taxonomy import TaxonomyEngine

    with _runtime(ray_address, ray_workers) as runtime:
        engine = TaxonomyEngine.load(storage, storage_options=_options(storage_options), device=device,
                                     column=column, id_column=id_column, runtime=runtime)
        manifest = engine.predict(input, output=output, beam=beam)
    click.echo(f"wrote paths of {manifest['meta']['rows']} rows to {output}")


@main.command()
@click.argument("storage")
@click.argument("queries")
@click.option("--k", type=int, default=10, show_default=True)
@click.option("--beam", type=int, default=8, show_default=True)
@click.option("--output", required=True, help="Parquet file of (query, rank, id, distance).")
@column_option
@options_option
def search(storage, queries, k, beam, output, column, storage_options):
    """The K fitted rows nearest each vector of QUERIES."""
    from .taxonomy import TaxonomyEngine

    engine = TaxonomyEngine.load(storage, storage_options=_options(storage_options))
    source = _source(queries, column, None, storage_options=_options(storage_options))
    q = np.concatenate([np.asarray(b.vectors) for b in source.blocks()])
    d, ids, compared = engine.search(q, k, beam=beam, return_compared=True)
    write_hits(output, d, ids)
    click.echo(f"{len(q)} queries, {compared.mean():.0f} rows compared per query; wrote {output}")


@main.command()
@click.argument("storage")
@click.argument("n", type=int)
@click.option("--strategy", type=click.Choice(["uniform-leaves", "hierarchical"]), default="uniform-leaves",
              show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--output", required=True, help="Parquet file of the sampled ids.")
@options_option
def sample(storage, n, strategy, seed, output, storage_options):
    """N ids spread evenly over the leaves of the taxonomy (or over children at every level)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .taxonomy import TaxonomyEngine

    engine = TaxonomyEngine.load(storage, storage_options=_options(storage_options))
    ids = engine.sample(n, strategy=strategy, random_state=seed)
    pq.write_table(pa.table({"id": ids}), output)
    click.echo(f"sampled {len(ids)} ids ({strategy}); wrote {output}")


@main.command()
@click.option("--branching", default="32,8,8", show_default=True)
@click.option("--show", type=int, default=6, show_default=True, help="Top-level branches to print.")
@click.option("--children", type=int, default=3, show_default=True, help="Children printed per branch.")
@click.option("--words", "n_words", type=int, default=8, show_default=True, help="Words per node.")
@click.option("--max-iter", type=int, default=10, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--limit", type=int, default=None, help="Use only the first N words (quick runs).")
@click.option("--storage", default=None,
              help="Where the taxonomy is kept (default: mega-taxonomy-demo/<parameters> in this folder); "
                   "a finished fit there is loaded, not fitted again.")
def demo(branching, show, children, n_words, max_iter, seed, device, limit, storage):
    """A 3-level taxonomy of the 400k GloVe 6B words, with the words nearest each node."""
    from .demo import default_storage, glove_files, run_demo
    from .storage import Store

    factors = _branching(branching)
    storage = storage or default_storage(factors, max_iter, seed, limit)
    manifest = Store(storage).manifest()
    kept = manifest is not None and manifest.get("status") == "done"
    summaries, engine, seconds = run_demo(factors, show, children, n_words, max_iter, seed, device, limit, storage)
    n = int(engine.tree_.levels[0].counts.sum())
    nodes = " x ".join(str(level.n_nodes) for level in engine.tree_.levels)
    done = f"loaded from {storage}" if kept else f"in {seconds:.1f} s"
    click.echo(f"taxonomy (cosine) of {n} GloVe words, {nodes} nodes, {engine.stats_['passes']} data passes {done}")
    for s in summaries:
        indent = "  " * s.level
        click.echo(f"{indent}[{s.level}:{s.node}] {s.size} words: {', '.join(s.words)}")
    words = glove_files()[1]
    click.echo(f"kept in {storage}: mega-taxonomy inspect / search / sample work on it; to browse it:")
    click.echo(f"  mega-taxonomy serve {shlex.quote(storage)} --labels {shlex.quote(str(words))} --label-column index")


main.add_command(serve)
main.add_command(report)


# Registered here, defined beside: cli_index and cli_knn do not import this module (no cycle).
from .cli_index import index  # noqa: E402
from .cli_knn import knn  # noqa: E402

main.add_command(index)
main.add_command(knn)
