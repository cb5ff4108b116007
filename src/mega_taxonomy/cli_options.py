"""What the command line's commands share wherever they are defined (``cli.py``, ``web/``): the
fsspec options of ``--storage-options``, given as JSON."""

from __future__ import annotations

import json

import click

options_option = click.option("--storage-options", default=None, help="fsspec options as JSON.")


def storage_options(text):
    """``--storage-options '{"client_kwargs": ...}'``: fsspec options as JSON (never logged)."""
    try:
        return json.loads(text) if text else None
    except json.JSONDecodeError as exc:  # the message must not echo the text: it may hold credentials
        raise click.BadParameter(f"not valid JSON ({exc.msg} at character {exc.pos})",
                                 param_hint="'--storage-options'") from None
