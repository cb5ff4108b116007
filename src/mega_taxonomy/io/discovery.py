"""Which files a source reads, in which order, and their readers: paths, globs, directories, URIs.

Why one sorted list: the global ordinal of a row is its position in the concatenation of the
files in sorted URI order, so the same files named any way (a directory, a glob, a list in any
order, with repeats) give the same ordinals and hence the same blocks. Names starting with "."
or "_" (checksums, ``_SUCCESS``, unfinished ``_temporary/`` output) are not data. Files are
opened in parallel, footers and headers only: on object stores every open is a round trip.
"""

import os
from concurrent.futures import ThreadPoolExecutor

import fsspec
from fsspec.implementations.local import LocalFileSystem

from mega_taxonomy.errors import DataError
from mega_taxonomy.io.formats import EXTENSIONS, open_reader


def is_hidden(relative_path):
    """Whether a path has a component starting with "." or "_" (checksums, _SUCCESS, _temporary/).

    Examples
    --------
    >>> is_hidden("part-0.parquet"), is_hidden("_temporary/part-0.parquet"), is_hidden(".a.crc")
    (False, True, True)
    """
    return any(part.startswith((".", "_")) for part in relative_path.split("/") if part)


def expand(spec, storage_options):
    """(fs, paths) of the files a path, glob, directory or URI names, sorted."""
    try:
        fs, path = fsspec.core.url_to_fs(spec, **storage_options)
        pattern = any(char in path for char in "*?[")
        matches = sorted(fs.glob(path)) if pattern else [path] if fs.exists(path) else []
        paths = []
        for match in matches:
            if pattern and is_hidden(match.rsplit("/", 1)[-1]):
                continue
            if fs.isdir(match):
                under = (p for p in fs.find(match) if p.lower().endswith(EXTENSIONS))
                paths += [p for p in under if not is_hidden(p[len(match) :])]
            else:
                paths.append(match)
    except (OSError, ValueError, ImportError) as exc:  # unknown protocol, no access, network
        raise DataError(f"cannot list: {exc}", file=spec) from exc
    if not matches:
        raise DataError("the pattern matches no files" if pattern else "no such file or directory", file=spec)
    if not paths:
        raise DataError(f"no {'/'.join(EXTENSIONS)} files found", file=spec)
    return fs, paths


def find_files(data, storage_options):
    """Expand paths, globs, directories and URIs into (uri, fs, path) triples, unique, in sorted URI order."""
    specs = [data] if isinstance(data, (str, os.PathLike)) else list(data)
    if not specs:
        raise DataError("no input files given")
    found = {}
    for spec in map(os.fspath, specs):
        fs, paths = expand(spec, storage_options)
        for path in paths:
            uri = path if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(path)
            found[uri] = (uri, fs, path)
    return [found[uri] for uri in sorted(found)]


def open_readers(files, column, id_column):
    """Open every file (footers and headers only), in parallel: remote opens are round trips."""
    first = next((i for i, (_, _, path) in enumerate(files) if path.lower().endswith(".parquet")), None)
    readers = {}
    if first is not None:  # the first parquet file decides the vector column of all
        readers[first] = open_reader(*files[first], column=column, id_column=id_column)
        column = readers[first].column
    rest = [i for i in range(len(files)) if i not in readers]
    if rest:
        with ThreadPoolExecutor(max_workers=min(16, len(rest))) as pool:
            opened = pool.map(lambda i: open_reader(*files[i], column=column, id_column=id_column), rest)
            readers.update(zip(rest, opened))
    return [readers[i] for i in range(len(files))]
