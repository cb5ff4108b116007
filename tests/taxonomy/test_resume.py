"""A fit killed with SIGKILL resumes from its last checkpoint and ends with the same tree, bit for
bit; a finished fit is not redone; other parameters on the same store are refused."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow.parquet as pq
import pytest

from mega_taxonomy.errors import ConfigError
from mega_taxonomy.taxonomy import TaxonomyEngine

PARAMS = dict(n_levels=3, branching_factor=[4, 3, 3], max_iter=6, tol=0, device="cpu", random_state=5)

# The child fits with the given parameters and kills itself with SIGKILL at a deterministic point:
# after the checkpoint of (level, iteration, balancing round) is committed, or inside the n-th
# Store.commit, after the data files of that commit were written but before its manifest.
CHILD = textwrap.dedent("""
    import json, os, signal, sys
    from mega_taxonomy.storage import Store
    from mega_taxonomy.taxonomy import TaxonomyEngine
    data, storage, mode, a, b, params, balance_round = sys.argv[1:8]
    params = json.loads(params)
    kill = lambda: os.kill(os.getpid(), signal.SIGKILL)
    callback = None
    if mode == "after":
        target = (int(a), int(b), int(balance_round))
        callback = lambda e: kill() if (e["level"], e["iteration"], e["round"]) == target else None
    else:
        commit, calls = Store.commit, []
        def dying_commit(self, **kw):
            calls.append(1)
            if len(calls) == int(a):
                kill()
            return commit(self, **kw)
        Store.commit = dying_commit
    TaxonomyEngine(**params, storage_uri=storage).fit(data, callback=callback)
""")


@pytest.fixture(scope="module")
def data(tmp_path_factory, make_hierarchy):
    X, _ = make_hierarchy(n_per_leaf=30, seed=3, noise=4.0)  # overlapping: every level runs 6 iterations
    path = tmp_path_factory.mktemp("resume") / "x.npy"
    np.save(path, X)
    return str(path)


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    storage = str(tmp_path_factory.mktemp("resume") / "ref")
    return TaxonomyEngine(**PARAMS, storage_uri=storage).fit(data), storage


def assert_same_tree(a, b):
    for la, lb in zip(a.tree_.levels, b.tree_.levels):
        for name in ("centroids", "parent", "counts", "child_offsets", "penalty"):
            np.testing.assert_array_equal(getattr(la, name), getattr(lb, name))


@pytest.mark.slow
@pytest.mark.parametrize("mode,a,b", [("after", 1, 2), ("after", 0, 0), ("after", 2, 6), ("commit", 5, 0),
                                      ("commit", 12, 0)])
def test_killed_fit_resumes_to_the_same_tree(data, uninterrupted, tmp_path, mode, a, b):
    storage = str(tmp_path / "tax")
    child = subprocess.run([sys.executable, "-c", CHILD, data, storage, mode, str(a), str(b), json.dumps(PARAMS), "0"],
                           capture_output=True, text=True, timeout=240)
    assert child.returncode == -signal.SIGKILL, child.stderr
    resumed = TaxonomyEngine(**PARAMS, storage_uri=storage).fit(data)
    reference, ref_storage = uninterrupted
    assert_same_tree(reference, resumed)
    loaded = TaxonomyEngine.load(storage)
    assert_same_tree(reference, loaded)
    ours = pq.read_table(os.path.join(storage, "assignments")).sort_by("id")
    theirs = pq.read_table(os.path.join(ref_storage, "assignments")).sort_by("id")
    assert ours.equals(theirs)


def test_finished_fit_is_not_redone(data, uninterrupted):
    reference, storage = uninterrupted
    events = []
    again = TaxonomyEngine(**PARAMS, storage_uri=storage).fit(data, callback=events.append)
    assert events == []
    assert_same_tree(reference, again)


def test_other_parameters_on_the_same_store_are_refused(data, uninterrupted):
    _, storage = uninterrupted
    with pytest.raises(ConfigError, match="max_iter"):
        TaxonomyEngine(**{**PARAMS, "max_iter": 7}, storage_uri=storage).fit(data)


@pytest.mark.slow
def test_killed_balancing_fit_resumes_to_the_same_tree(data, tmp_path):
    """Killed in a second balancing round of level 1: the resumed fit reloads that round's structure."""
    params = {**PARAMS, "balance": "split", "balance_factor": 1.3, "branching_factor": [3, 4, 2]}
    reference = TaxonomyEngine(**params, storage_uri=str(tmp_path / "ref")).fit(data)
    rounds = [level["balance_rounds"] for level in reference.stats_["levels"]]
    assert rounds[1] >= 1, rounds
    storage = str(tmp_path / "tax")
    child = subprocess.run([sys.executable, "-c", CHILD, data, storage, "after", "1", "2", json.dumps(params), "1"],
                           capture_output=True, text=True, timeout=240)
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert_same_tree(reference, TaxonomyEngine(**params, storage_uri=storage).fit(data))


@pytest.mark.slow
def test_killed_penalty_fit_resumes_to_the_same_tree(data, tmp_path):
    """Killed among the size-penalised passes of level 2, whose penalties follow from the pass
    before: the resumed fit reloads them from the checkpoint."""
    params = {**PARAMS, "balance": "penalty"}
    reference = TaxonomyEngine(**params, storage_uri=str(tmp_path / "ref")).fit(data)
    assert reference.tree_.levels[2].penalty is not None
    storage = str(tmp_path / "tax")
    child = subprocess.run([sys.executable, "-c", CHILD, data, storage, "after", "2", "3", json.dumps(params), "1"],
                           capture_output=True, text=True, timeout=240)
    assert child.returncode == -signal.SIGKILL, child.stderr
    resumed = TaxonomyEngine(**params, storage_uri=storage).fit(data)
    assert_same_tree(reference, resumed)
    assert_same_tree(reference, TaxonomyEngine.load(storage))


class Stop(Exception):
    """Stands for a process killed right after a commit."""


def test_a_fit_stopped_after_a_converged_iteration_does_not_iterate_again(data, tmp_path):
    """With tol > 0, the checkpoint of the iteration that converged leaves only the level's final
    pass: one more iteration would move the centroids of a fit that never stopped."""
    params = {**PARAMS, "tol": 1e-2, "max_iter": 50}
    reference = TaxonomyEngine(**params, storage_uri=str(tmp_path / "ref")).fit(data)
    converged = reference.stats_["levels"][2]["iterations"]
    assert converged < 50
    storage = str(tmp_path / "tax")

    def stop(event):
        if (event["event"], event["level"], event["iteration"]) == ("iteration", 2, converged):
            raise Stop

    with pytest.raises(Stop):
        TaxonomyEngine(**params, storage_uri=storage).fit(data, callback=stop)
    assert_same_tree(reference, TaxonomyEngine(**params, storage_uri=storage).fit(data))
