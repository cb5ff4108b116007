"""Data sets of bench_learners.py: scikit-learn's bundled sets, river's bundled files read
directly (river's loaders need pandas, which the bench does not), and the generated sets."""

from __future__ import annotations

import gzip
import importlib.util
import io
import zipfile
from pathlib import Path

import numpy as np
import scipy.sparse as sp


def _river_file(name: str) -> Path:
    spec = importlib.util.find_spec("river")
    if spec is None:
        raise RuntimeError("river is not installed (pip install river: the bench extra)")
    return Path(spec.submodule_search_locations[0]) / "datasets" / name


def bananas():
    """river.datasets.Bananas: 5300 x 2, two classes (libsvm text in banana.zip)."""
    with zipfile.ZipFile(_river_file("banana.zip")) as z:
        text = z.read("banana.all.txt").decode()
    rows = [line.split() for line in text.splitlines() if line.strip()]
    y = np.array([int(r[0] == "1") for r in rows])
    X = np.array([[float(t.split(":")[1]) for t in r[1:]] for r in rows])
    return X, y


def image_segments():
    """river.datasets.ImageSegments: 2310 x 18, seven classes."""
    with zipfile.ZipFile(_river_file("segment.csv.zip")) as z:
        name = z.namelist()[0]  # river names the csv inside as the archive: segment.csv.zip
        lines = z.read(name).decode().splitlines()
    rows = [line.split(",") for line in lines[1:] if line.strip()]
    X = np.array([[float(v) for v in r[:-1]] for r in rows])
    _, y = np.unique([r[-1] for r in rows], return_inverse=True)
    return X, y


def yeast():
    """river.datasets.Yeast: 2417 x 103, 14 tags (multi-label)."""
    with gzip.open(_river_file("yeast.csv.gz"), "rt") as f:
        lines = f.read().splitlines()
    header = lines[0].split(",")
    data = np.loadtxt(io.StringIO("\n".join(lines[1:])), delimiter=",", dtype=str)
    n_features = sum(h.startswith("Att") for h in header)
    X = data[:, :n_features].astype(np.float64)
    Y = np.isin(np.char.lower(data[:, n_features:]), ["1", "true"]).astype(np.int64)
    return X, Y


def speed_set():
    """The streaming / predict-speed set: 600k x 64, 10 classes; last 100k rows held out."""
    from sklearn.datasets import make_classification

    X, y = make_classification(n_samples=600_000, n_features=64, n_informative=32, n_classes=10,
                               n_clusters_per_class=4, class_sep=1.5, random_state=0)
    return X.astype(np.float32), y


def many_class_sparse(n_classes=20_000, per_class=6, n_features=2 ** 16, seed=0):
    """A many-class sparse set in the style of ``make_multilabel_classification``: every class is a
    bag of 30 "words" among ``n_features`` hashed ids; a row draws 20 words from its class and 10
    from the whole vocabulary (noise), counts them, and is L2-normalized: a CSR row of a hashed
    bag of words. ``per_class`` rows per class; the last of each class is held out."""
    rng = np.random.default_rng(seed)
    words = rng.integers(n_features, size=(n_classes, 30))
    y = np.repeat(np.arange(n_classes), per_class)
    own = np.take_along_axis(words[y], rng.integers(30, size=(len(y), 20)), 1)
    noise = rng.integers(n_features, size=(len(y), 10))
    cols = np.concatenate([own, noise], 1)
    rows = np.repeat(np.arange(len(y)), cols.shape[1])
    X = sp.csr_matrix((np.ones(cols.size), (rows, cols.reshape(-1))), shape=(len(y), n_features))
    X.sum_duplicates()
    norms = np.sqrt(np.asarray(X.multiply(X).sum(1)).ravel())
    X = sp.diags(1.0 / norms) @ X
    test = np.arange(len(y)) % per_class == per_class - 1
    return X.tocsr().astype(np.float32), y, test
