"""The E-step over every block at once (``EStepTask.whole``: a tensor on the runtime's GPU, or
host rows by runs of blocks), checked on the CPU against the blocks one by one: the same bits."""

import importlib

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning

from mega_taxonomy.cluster import GaussianMixture
from mega_taxonomy.cluster.em import EStepState, EStepTask
from mega_taxonomy.io import BLOCK_ROWS, VectorSource
from mega_taxonomy.runtime import LocalRuntime, local, settled
from mega_taxonomy.runtime.local import cpu_threads

FIELDS = ("n_rows", "log_likelihood", "resp_sum", "x_sum", "x2_sum")


def rows(n=2 * BLOCK_ROWS + 1000, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(4, d, generator=g, dtype=torch.float64) * 3
    # scales far apart: float64 sums whose bits depend on the order of the additions
    return (centres[torch.randint(0, 4, (n,), generator=g)] + torch.randn(n, d, generator=g, dtype=torch.float64)
            ) * torch.exp(torch.randn(n, 1, generator=g, dtype=torch.float64))


def a_state(x, ctype):
    """The parameters of a mixture after one iteration on the first rows."""
    gm = GaussianMixture(4, covariance_type=ctype, max_iter=1, tol=0, random_state=0, device="cpu")
    with pytest.warns(ConvergenceWarning):  # not converged in one iteration
        gm.fit(x[:3000].numpy())
    return EStepState(gm._params(), ctype)


def assert_same_partial(got, want, on_device=False):
    """The same values, of the same types; ``on_device``: ``got``'s sums are tensors (a whole
    pass's stay where its rows are), read here."""
    for name in FIELDS:
        a, b = getattr(got, name), getattr(want, name)
        if on_device and name != "n_rows":
            assert isinstance(a, torch.Tensor), name
            a = a.item() if a.dim() == 0 else a.numpy()
        assert type(a) is type(b) and np.array_equal(a, b), name


@pytest.mark.parametrize("ctype", ["diag", "spherical", "full", "tied"])
def test_whole_pass_and_runs_are_the_blocks_one_by_one(ctype):
    x = rows()
    source = VectorSource(x)
    state = a_state(x, ctype)
    by_blocks = LocalRuntime("cpu", progress=False).map_reduce(source, EStepTask(), state)
    assert source.n_blocks == 3 and by_blocks.n_rows == len(x)
    with cpu_threads("cpu"):  # as the runtime runs the blocks: a CPU product's bits depend on torch's threads
        whole = settled(EStepTask().whole(source.whole_block(), state, torch.device("cpu")))
        assert_same_partial(whole, by_blocks, on_device=True)
        runs = [source.unchecked_run(0, 2)[0], source.unchecked_run(2, 3)[0]]
        parts = [EStepTask().whole(run, state, torch.device("cpu"), part=True) for run in runs]
    assert_same_partial(settled(parts[0] + parts[1]), by_blocks)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_gaussian_mixture_on_a_whole_tensor_and_by_runs_is_the_blocks_one_by_one(whole_on_cpu, monkeypatch):
    x = rows(3 * BLOCK_ROWS + 500, seed=1)

    def fit(data):
        return GaussianMixture(4, covariance_type="diag", max_iter=5, tol=0, random_state=0, device="cpu").fit(data)

    whole = fit(x)
    assert len(whole_on_cpu) >= 5 and all(whole_on_cpu)
    taken = []
    monkeypatch.setattr(local, "run_blocks", lambda source, device: taken.append(2) or 2)
    by_runs = fit(x.numpy())  # an array: never whole, by runs of 2 blocks here
    assert len(taken) >= 5
    monkeypatch.setattr(local, "run_blocks", lambda source, device: None)
    by_blocks = fit(x.numpy())
    for got in (whole, by_runs):
        for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
            np.testing.assert_array_equal(getattr(got, name), getattr(by_blocks, name), err_msg=name)
        assert got.lower_bound_ == by_blocks.lower_bound_ and got.n_iter_ == by_blocks.n_iter_


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("ctype", ["diag", "spherical"])
def test_passes_launched_ahead_on_the_m_step_queued_behind_the_sums(ctype, whole_on_cpu, monkeypatch):
    """A whole pass leaves its sums where its rows are (a GPU's tensors; here the CPU's): EM runs
    the M-step on them there and launches the next pass on its parameters before it reads them,
    from the second pass on (the first pass's time is the first known). The fit of the blocks
    one by one, to the bit."""
    from mega_taxonomy.cluster import em

    driver = importlib.import_module("mega_taxonomy.runtime.iterate")  # (the package's ``iterate`` is its function)
    monkeypatch.setattr(driver, "LOOK_AHEAD_MAX_SECONDS", 60.0)  # every pass short, on a loaded machine too
    events = []
    run_pass, update = em.EM.run_pass, em.EM.update
    monkeypatch.setattr(em.EM, "run_pass", lambda self, params, i: events.append(f"pass {i}") or run_pass(
        self, params, i))
    monkeypatch.setattr(em.EM, "update", lambda self, step, params, i: events.append(f"update {i}") or update(
        self, step, params, i))
    x = rows(2 * BLOCK_ROWS + 500, seed=2)

    def fit(data):
        return GaussianMixture(4, covariance_type=ctype, max_iter=5, tol=0, random_state=0, device="cpu").fit(data)

    ahead = fit(x)
    assert all(whole_on_cpu) and events == ["pass 1", "update 1", "pass 2", "pass 3", "update 2", "pass 4",
                                            "update 3", "pass 5", "update 4", "update 5"]
    monkeypatch.setattr(local, "run_blocks", lambda source, device: None)
    events.clear()
    by_blocks = fit(x.numpy())
    assert events == [f"{what} {i}" for i in range(1, 6) for what in ("pass", "update")]
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        np.testing.assert_array_equal(getattr(ahead, name), getattr(by_blocks, name), err_msg=name)
    assert ahead.lower_bounds_ == by_blocks.lower_bounds_ and ahead.n_iter_ == by_blocks.n_iter_ == 5
