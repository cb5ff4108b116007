"""The taxonomy browser and report: they read what a fit stored (through ``storage/``) and the
loaded tree, and import nothing of the fitting machinery.

- :class:`TaxonomyView` (``view.py``): read-only questions about a stored taxonomy.
- :class:`Labels` (``labels.py``): a text per id, from a parquet table.
- ``server.py``: ``create_app(view)`` and ``serve(view, host, port)`` (Starlette; ``mega-taxonomy serve``).
- ``report.py``: ``write_report(view, path)``, one self-contained HTML file (``mega-taxonomy report``).

The server and the report need the ``web`` extra (starlette, uvicorn, plotly).
"""

from .labels import Labels
from .view import NotFound, TaxonomyView

__all__ = ["Labels", "NotFound", "TaxonomyView"]
