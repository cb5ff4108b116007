"""The project's exception types.

Every error a user can cause names what to fix: the file, the row and the column for bad data,
the URI for storage, the parameter for configuration.
"""


class MegaTaxonomyError(Exception):
    """Base class of the errors raised by mega_taxonomy."""


class DataError(MegaTaxonomyError, ValueError):
    """Bad input data: unreadable, corrupt, non-finite, wrong shape or type.

    The message names the file (or URI), the row and the column where they are known; the same
    facts are kept as attributes for programs.
    """

    def __init__(self, message, *, file=None, row=None, column=None):
        where = []
        if file is not None:
            where.append(str(file))
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column {column!r}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)
        self.file, self.row, self.column = file, row, column


class StorageError(MegaTaxonomyError, OSError):
    """State in a Store is missing, corrupt (checksum mismatch) or cannot be written."""


class ConfigError(MegaTaxonomyError, ValueError):
    """Impossible or contradictory parameters (e.g. more clusters than points)."""


class WorkerError(MegaTaxonomyError, RuntimeError):
    """Distributed work failed for good: a unit of work lost its worker too many times, or the
    workers asked for cannot be started on the cluster."""
