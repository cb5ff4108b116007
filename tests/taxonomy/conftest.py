import numpy as np
import pytest


def hierarchy(n_per_leaf=40, branching=(4, 3, 3), scales=(100.0, 12.0, 2.0), noise=0.15, d=6, seed=0):
    """Points around a known 3-level tree of centers; returns X and the true global node id per level."""
    rng = np.random.default_rng(seed)
    centers, truth = [np.zeros((1, d))], []
    for b, s in zip(branching, scales):
        parents = centers[-1]
        centers.append((parents[:, None, :] + rng.normal(size=(len(parents), b, d)) * s).reshape(-1, d))
    leaves = centers[-1]
    leaf = np.repeat(np.arange(len(leaves)), n_per_leaf)
    X = leaves[leaf] + rng.normal(size=(len(leaf), d)) * noise
    node = leaf
    for b in reversed(branching):
        truth.append(node)
        node = node // b
    return X.astype(np.float32), truth[::-1]


@pytest.fixture(scope="session")
def three_levels():
    return hierarchy()


@pytest.fixture(scope="session")
def make_hierarchy():
    return hierarchy
