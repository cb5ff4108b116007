"""The browser's commands, ``mega-taxonomy serve`` and ``mega-taxonomy report`` (added to the
command group by ``cli.py``); starlette, uvicorn and plotly are imported only when they run."""

from __future__ import annotations

import click

from ..cli_options import options_option
from ..cli_options import storage_options as parse_storage_options
from ..errors import ConfigError
from .labels import Labels
from .view import TaxonomyView


def _view(storage, labels, label_column, storage_options):
    """The stored taxonomy at STORAGE as the browser and the report see it (``web`` extra)."""
    if (labels is None) != (label_column is None):
        raise click.UsageError("--labels and --label-column go together")
    options = parse_storage_options(storage_options)
    table = Labels(labels, label_column, storage_options=options) if labels else None
    return TaxonomyView(storage, labels=table, storage_options=options)


labels_option = click.option("--labels", default=None, metavar="PARQUET",
                             help="Parquet table of labels: joined on its 'id' column, else on the row ordinal.")
label_column_option = click.option("--label-column", default=None, metavar="COL", help="The label column of --labels.")


@click.command()
@click.argument("storage")
@labels_option
@label_column_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (local only by default).")
@click.option("--port", type=int, default=8000, show_default=True)
@options_option
def serve(storage, labels, label_column, host, port, storage_options):
    """Browse the taxonomy at STORAGE in a web browser (read-only)."""
    view = _view(storage, labels, label_column, storage_options)
    try:
        from .server import serve as run_server
    except ImportError as exc:
        raise ConfigError(f"serve needs the web extra: pip install 'mega-taxonomy[web]' ({exc})") from exc

    click.echo(f"serving {storage} ({view.rows} rows) at http://{host}:{port}/  (Ctrl-C stops)")
    run_server(view, host, port)


@click.command()
@click.argument("storage")
@click.option("--out", required=True, help="The HTML file to write.")
@labels_option
@label_column_option
@options_option
def report(storage, out, labels, label_column, storage_options):
    """Write one self-contained HTML report (sizes, histograms, imbalance) of the taxonomy at STORAGE."""
    view = _view(storage, labels, label_column, storage_options)
    try:
        from .report import write_report
    except ImportError as exc:
        raise ConfigError(f"report needs the web extra: pip install 'mega-taxonomy[web]' ({exc})") from exc

    click.echo(f"wrote {write_report(view, out)}")
