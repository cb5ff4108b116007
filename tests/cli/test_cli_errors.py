"""Errors of the mega-taxonomy command: one line naming what to fix, exit status 2 for bad input
or parameters, 1 for storage and other failures; the traceback only with ``--debug``."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from mega_taxonomy.cli import main

ROWS, DIM = 40, 4


def vectors(n=ROWS, dim=DIM, seed=0):
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def fixed(x):
    return pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1])


def write(path, **columns):
    pq.write_table(pa.table(columns), path)
    return path


def good_and_bad(folder, bad_rows):
    """A good file a.parquet, then b.parquet whose rows are ``bad_rows`` (a list of lists or None):
    a bad row of b is named by its row inside b, not in the whole source."""
    write(folder / "a.parquet", emb=fixed(vectors()))
    write(folder / "b.parquet", emb=pa.array(bad_rows, pa.list_(pa.float32())))
    return str(folder)


def non_finite(value):
    def make(folder):
        rows = vectors(seed=1).tolist()
        rows[7][2] = value
        return good_and_bad(folder, rows)
    return make


def row_edit(row, edit):
    def make(folder):
        rows = vectors(seed=1).tolist()
        rows[row] = edit(rows[row])
        return good_and_bad(folder, rows)
    return make


def other_dimension(folder):
    write(folder / "a.parquet", emb=fixed(vectors()))
    write(folder / "b.parquet", emb=fixed(vectors(dim=DIM + 1)))
    return str(folder)


def strings(folder):
    return str(write(folder / "s.parquet", emb=pa.array([["a", "b"]] * 3, pa.list_(pa.string()))))


def not_a_list(folder):
    return str(write(folder / "f.parquet", emb=pa.array(np.arange(3.0))))


def complex_npy(folder):
    np.save(folder / "c.npy", np.ones((5, 3), np.complex64))
    return str(folder / "c.npy")


def empty_file(folder):
    (folder / "e.parquet").write_bytes(b"")
    return str(folder / "e.parquet")


def corrupt_parquet(folder):
    (folder / "c.parquet").write_bytes(b"PAR1" + bytes(range(256)) * 4 + b"PAR1")
    return str(folder / "c.parquet")


def truncated_npy(folder):
    np.save(folder / "t.npy", vectors())
    data = (folder / "t.npy").read_bytes()
    (folder / "t.npy").write_bytes(data[: len(data) // 2])
    return str(folder / "t.npy")


def one_dimensional_npy(folder):
    np.save(folder / "o.npy", np.arange(5.0))
    return str(folder / "o.npy")


def several_columns(folder):
    return str(write(folder / "m.parquet", a=fixed(vectors()), b=fixed(vectors(seed=2))))


def no_vector_column(folder):
    return str(write(folder / "n.parquet", text=pa.array(["x"] * 3)))


def vectors_and_ids(ids):
    def make(folder):
        return str(write(folder / "i.parquet", emb=fixed(vectors()), key=ids))
    return make


def no_rows(folder):
    return str(write(folder / "z.parquet", emb=fixed(vectors(n=0))))


def unknown_type(folder):
    (folder / "v.txt").write_text("1 2 3\n")
    return str(folder / "v.txt")


def nothing(folder):
    return str(folder / "nothing-*.parquet")


# (input, extra arguments, fragments of the one line)
BAD_INPUT = {
    "nan": (non_finite(float("nan")), [], ["b.parquet", "row 7", "column 'emb'", "NaN", "dimension 2"]),
    "inf": (non_finite(float("inf")), [], ["b.parquet", "row 7", "column 'emb'", "value inf", "dimension 2"]),
    "-inf": (non_finite(float("-inf")), [], ["b.parquet", "row 7", "column 'emb'", "-inf", "dimension 2"]),
    "null vector": (row_edit(5, lambda r: None), [], ["b.parquet", "row 5", "column 'emb'", "null vector"]),
    "null value": (row_edit(3, lambda r: [r[0], None, *r[2:]]), [],
                   ["b.parquet", "row 3", "column 'emb'", "null value at dimension 1"]),
    "ragged row": (row_edit(9, lambda r: r[:-1]), [], ["b.parquet", "row 9", "column 'emb'", f"has {DIM - 1} values"]),
    "wrong dimension": (other_dimension, [], ["b.parquet", f"dimension {DIM + 1}", f"dimension {DIM}"]),
    "wrong dtype": (strings, [], ["s.parquet", "no list<float> column"]),
    "wrong dtype chosen": (strings, ["--column", "emb"], ["s.parquet", "column 'emb'", "not numeric"]),
    "not a vector column": (not_a_list, ["--column", "emb"], ["f.parquet", "column 'emb'", "not a vector column"]),
    "wrong dtype npy": (complex_npy, [], ["c.npy", "complex64", "not numeric"]),
    "empty file": (empty_file, [], ["e.parquet", "empty file"]),
    "corrupt file": (corrupt_parquet, [], ["c.parquet", "not a readable parquet file"]),
    "truncated npy": (truncated_npy, [], ["t.npy", "truncated"]),
    "wrong shape npy": (one_dimensional_npy, [], ["o.npy", "2-D"]),
    "missing column": (several_columns, ["--column", "emb"], ["m.parquet", "column 'emb'", "no such column"]),
    "several columns": (several_columns, [], ["m.parquet", "several candidate vector columns"]),
    "no vector column": (no_vector_column, [], ["n.parquet", "no list<float> column", "'text'"]),
    "missing id column": (vectors_and_ids(pa.array(range(ROWS))), ["--id-column", "id"],
                          ["i.parquet", "column 'id'", "no such id column"]),
    "float ids": (vectors_and_ids(pa.array(np.arange(ROWS, dtype=float))), ["--id-column", "key"],
                  ["i.parquet", "column 'key'", "ids must be integers"]),
    "null id": (vectors_and_ids(pa.array([*range(11), None, *range(12, ROWS)])), ["--id-column", "key"],
                ["i.parquet", "row 11", "column 'key'", "null id"]),
    "no rows": (no_rows, [], ["z.parquet", "no rows"]),
    "unknown file type": (unknown_type, [], ["v.txt", "unknown file type"]),
    "no files": (nothing, [], ["nothing-*.parquet", "matches no files"]),
}


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line(result):
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


@pytest.mark.parametrize("kind", list(BAD_INPUT))
def test_bad_input_is_one_line_with_file_row_and_column_and_status_2(tmp_path, kind):
    make, extra, fragments = BAD_INPUT[kind]
    folder = tmp_path / "data"
    folder.mkdir()
    result = invoke("kmeans", "fit", make(folder), "--k", "2", "--storage", tmp_path / "km", "--device", "cpu",
                    *extra)
    assert result.exit_code == 2, result.output
    line = one_line(result)
    assert line.startswith("Error: ")
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    assert f"row {ROWS + 7}" not in line  # rows are counted inside their file
    assert not (tmp_path / "km").exists() or not any((tmp_path / "km").rglob("*.npy"))  # nothing written


def test_debug_adds_the_traceback_with_the_same_status(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    uri = non_finite(float("nan"))(folder)
    result = invoke("--debug", "kmeans", "fit", uri, "--k", "2", "--storage", tmp_path / "km", "--device", "cpu")
    assert result.exit_code == 2
    assert "Traceback (most recent call last)" in result.stderr and "DataError" in result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.startswith("Error: ") and "b.parquet, row 7, column 'emb': value NaN" in last


def test_bad_parameters_exit_with_status_2(tmp_path):
    uri = str(write(tmp_path / "a.parquet", emb=fixed(vectors())))
    too_many = invoke("kmeans", "fit", uri, "--k", str(ROWS + 1), "--storage", tmp_path / "km", "--device", "cpu")
    assert too_many.exit_code == 2, too_many.output
    assert f"n_clusters={ROWS + 1}" in one_line(too_many)
    for args in (["kmeans", "fit", uri, "--storage", tmp_path / "km"],  # --k missing: click's usage error
                 ["fit", uri, "--storage", tmp_path / "t", "--branching", "4,x"],
                 ["kmeans", "fit", uri, "--k", "2", "--storage", tmp_path / "km", "--storage-options", "{nope"],
                 ["no-such-command"]):
        result = invoke(*args)
        assert result.exit_code == 2, (args, result.output)
        assert "Traceback" not in result.output and "Error" in result.stderr


def test_storage_errors_exit_with_status_1(tmp_path):
    result = invoke("inspect", tmp_path / "no-taxonomy-here")
    assert result.exit_code == 1, result.output
    line = one_line(result)
    assert "no-taxonomy-here" in line


def test_other_failures_exit_with_status_1_and_name_their_type(tmp_path, monkeypatch):
    import mega_taxonomy.cluster

    def broken(*args, **kwargs):
        raise RuntimeError("the device fell over\nwith a second line")

    monkeypatch.setattr(mega_taxonomy.cluster.KMeans, "fit", broken)
    uri = str(write(tmp_path / "a.parquet", emb=fixed(vectors())))
    result = invoke("kmeans", "fit", uri, "--k", "2", "--storage", tmp_path / "km", "--device", "cpu")
    assert result.exit_code == 1
    assert one_line(result) == "Error: RuntimeError: the device fell over with a second line"


def test_off_a_terminal_no_progress_bar_and_a_log_line_per_level(tmp_path, caplog):
    import logging

    logger = logging.getLogger("mega_taxonomy.taxonomy")
    before = logger.level
    uri = str(write(tmp_path / "a.parquet", emb=fixed(vectors(n=400))))
    assert logging.getLogger().getEffectiveLevel() == logging.WARNING  # no INFO line without the command's
    try:
        result = invoke("fit", uri, "--storage", tmp_path / "tax", "--levels", "2", "--branching", "3,2",
                        "--device", "cpu")
    finally:
        logger.setLevel(before)
    assert result.exit_code == 0, result.output
    assert "block/s" not in result.stderr and "it/s" not in result.stderr  # no tqdm bar (CliRunner: no TTY)
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("mega_taxonomy.taxonomy")]
    assert any(line.startswith("level 0: 3 nodes") for line in lines), lines
    assert any(line.startswith("level 1: 6 nodes") for line in lines), lines
