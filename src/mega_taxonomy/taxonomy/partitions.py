"""Rows written out grouped by their node: the partition pass, and a node's rows gathered back.

The partition pass routes every row down the levels fitted over all rows and writes each block
once, its rows sorted by node (by ordinal within a node), one parquet row group per node:
``partitions/block-<b>.parquet``, with the rows' ids beside their vectors. The driver keeps what
is O(nodes + blocks): the rows per node and the files' checksums. A worker that fits subtrees
reads the footers of the block files once, then only its nodes' row groups, and writes each
node's rows as a file of its own, ``partitions/node-<j>.parquet``, which is what that node's fit
reads (:func:`gather`). The ids travel with the rows, so a subtree samples its rows by the same
hash of their ids as a fit over all rows would.

Why one file per block rather than per (block, node): a block of 65,536 rows would otherwise
make thousands of files of a few rows each at the deep levels of a large tree; row groups give
a reader the same selectivity from one footer.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ..io.device import as_tensor
from ..storage import Store
from .passes import RouteTask
from .router import route_greedy
from .tree import Tree

FOLDER = "partitions"
NODE, ID, VECTOR = "node", "id", "vector"


def block_file(block: int) -> str:
    return f"{FOLDER}/block-{block:08d}.parquet"


def node_file(node: int) -> str:
    return f"{FOLDER}/node-{node:08d}.parquet"


@dataclass
class PartitionPartial:
    """Rows per node, and the block files written (store name -> ``{"sha256", "bytes"}``)."""

    counts: np.ndarray
    files: dict = field(default_factory=dict)

    def __add__(self, other):
        return PartitionPartial(self.counts + other.counts, {**self.files, **other.files})


@dataclass(frozen=True)
class PartitionState:
    tree: Tree  # the levels fitted over all rows: a row goes to its node of the last one
    store: tuple  # (uri, storage_options) of the Store that receives the block files


class PartitionTask(RouteTask):
    """Write a block's rows grouped by their node at the tree's last level."""

    def __call__(self, block, state: PartitionState, device) -> PartitionPartial:
        tree = state.tree
        paths, _ = route_greedy(as_tensor(block.vectors, device), tree, router=self._router(tree))
        nodes = paths[:, -1].cpu().numpy()
        order = np.argsort(nodes, kind="stable")  # by node, then by ordinal
        table = rows_table(nodes[order], np.asarray(block.ids)[order], host_rows(block.vectors)[order])
        cuts = np.r_[0, np.flatnonzero(np.diff(nodes[order])) + 1, len(order)]

        def groups():
            return (table.slice(start, stop - start) for start, stop in zip(cuts[:-1], cuts[1:]) if stop > start)

        name = block_file(block.index)
        entry = Store(state.store[0], storage_options=state.store[1]).put_row_groups(name, table.schema, groups)
        return PartitionPartial(np.bincount(nodes, minlength=tree.levels[-1].n_nodes).astype(np.int64), {name: entry})


def host_rows(vectors) -> np.ndarray:
    """A block's rows as numpy (bfloat16, which parquet cannot hold, as float32)."""
    if isinstance(vectors, torch.Tensor):
        vectors = vectors.detach()
        return (vectors.float() if vectors.dtype == torch.bfloat16 else vectors).cpu().numpy()
    return np.asarray(vectors)


def rows_table(nodes: np.ndarray, ids: np.ndarray, vectors: np.ndarray) -> pa.Table:
    flat = pa.array(np.ascontiguousarray(vectors).reshape(-1))
    return pa.table({NODE: pa.array(nodes.astype(np.int32)), ID: pa.array(ids.astype(np.int64)),
                     VECTOR: pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])})


def gather(store: Store, n_blocks: int, nodes) -> dict:
    """Write the rows of each of ``nodes`` as ``node_file(node)``, in block order, from its row
    group of each block file (block files with no row of a node hold no group of it); returns
    ``{name: {"sha256", "bytes"}}``. Each block file's footer is read once for all ``nodes``."""
    wanted, where, schema = {int(n) for n in nodes}, defaultdict(list), None
    for block in range(n_blocks):
        name = block_file(block)
        with store.open(name) as f:
            metadata = pq.ParquetFile(f).metadata
        schema = schema or metadata.schema.to_arrow_schema()
        for group in range(metadata.num_row_groups):
            node = int(metadata.row_group(group).column(0).statistics.min)  # one node a group
            if node in wanted:
                where[node].append((name, group))

    def groups(node):
        for name, group in where[node]:
            with store.open(name) as f:
                yield pq.ParquetFile(f).read_row_group(group)

    return {node_file(node): store.put_row_groups(node_file(node), schema, lambda node=node: groups(node))
            for node in sorted(wanted)}
