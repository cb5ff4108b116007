"""The hash table's Triton kernels (in the interpreter without a GPU) against the torch twin and
numba's in-order loop, on small tables."""

import numpy as np
import pytest
import torch

from mega_taxonomy.kv import EvictStrategy, HashTable
from mega_taxonomy.ops import hash_table as ht
from mega_taxonomy.ops.hash_table import numba as nk

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the Triton kernels: compiled there, else interpreted

pytest.importorskip("triton")


def test_fmix64_matches_numba_and_python():
    keys = torch.tensor([0, 1, -1, 2**62 + 12345, -(2**63)])
    mask = 2**64 - 1

    def fmix(k):
        k &= mask
        k ^= k >> 33
        k = (k * 0xFF51AFD7ED558CCD) & mask
        k ^= k >> 33
        k = (k * 0xC4CEB9FE1A85EC53) & mask
        return k ^ (k >> 33)

    expected = [fmix(int(k)) for k in keys]
    assert (ht.fmix64(keys).numpy().view(np.uint64).tolist()) == expected
    assert [int(nk.fmix64(int(k))) for k in keys] == expected


@pytest.mark.parametrize("rule", [ht.SCORE_SET, ht.SCORE_ADD, ht.SCORE_EPOCH_ADD])
def test_rounds_triton_equals_torch_and_numba(rule):
    rng = np.random.default_rng(rule)
    tables = {name: ht.Buckets.allocate(8, 16, -1, device=DEVICE if name == "triton" else "cpu")
              for name in ("torch", "triton", "numba")}
    for _ in range(3):  # fills 8 x 16 slots past full: evictions and refusals
        keys = torch.from_numpy(rng.choice(10**6, 60, replace=False))
        desired = torch.from_numpy(rng.integers(-(2**63), 2**63 - 1, 60))  # all of uint64's range
        got = {n: ht.upsert_rounds(tables[n], keys.to(tables[n].keys.device), desired.to(tables[n].keys.device), rule,
                                   insert=True, backend=n) for n in ("torch", "triton")}
        got["triton"] = type(got["triton"])(**{k: t.cpu() for k, t in vars(got["triton"]).items()})
        b = tables["numba"]
        empty = np.empty((0, 1), np.float32)
        nk.upsert(b.keys.numpy(), b.digests.numpy(), b.scores.numpy(), b.sizes.numpy(), empty,
                  np.zeros((128, 1), np.float32), 0, b.shift, b.empty, keys.numpy(), empty, desired.numpy(), rule,
                  np.zeros(60, bool), nk.OP_INSERT_OR_ASSIGN, empty, np.empty(60, np.int64), keys.numpy().copy(),
                  np.zeros((60, 1), np.float32), keys.numpy().copy())
        for field in ("slots", "status", "evicted_keys", "evicted_scores"):
            assert torch.equal(getattr(got["torch"], field), getattr(got["triton"], field)), field
        for name in ("keys", "digests", "scores", "sizes"):
            assert torch.equal(getattr(tables["torch"], name), getattr(tables["triton"], name).cpu()), name
            assert torch.equal(getattr(tables["torch"], name), getattr(tables["numba"], name)), name
    probe = torch.cat([keys, torch.arange(50)])
    for a, b in zip(ht.lookup(tables["torch"], probe, backend="torch"),
                    ht.lookup(tables["triton"], probe.to(DEVICE), backend="triton")):
        assert torch.equal(a, b.cpu())


@pytest.mark.parametrize("dim", [1, 8, 5])
def test_lookup_with_values_reads_the_rows_of_the_found_keys(dim):
    """The fused lookup (Triton: values read in the lookup's launch) against the twin: rows of
    the found keys, zeros for the missing, slots and scores as ``lookup``'s."""
    rng = np.random.default_rng(dim)
    b = ht.Buckets.allocate(8, 16, -1, device=DEVICE)
    keys = torch.from_numpy(rng.choice(10**6, 90, replace=False)).to(DEVICE)
    ht.upsert_rounds(b, keys, torch.arange(90, device=DEVICE), ht.SCORE_SET, insert=True, backend="triton")
    values = torch.from_numpy(rng.normal(size=(8 * 16, dim)).astype(np.float32)).to(DEVICE)
    probe = torch.cat([keys[::2], torch.arange(30, device=DEVICE)])
    slots, scores, rows = ht.lookup_values(b, probe, values, backend="triton")
    on_host = ht.Buckets(*(t.cpu() for t in (b.keys, b.digests, b.scores, b.sizes)), b.empty)
    ref = ht.lookup_values(on_host, probe.cpu(), values.cpu(), backend="torch")
    assert 40 <= int((slots >= 0).sum()) <= 45 and bool((rows[slots < 0] == 0).all())  # 30 keys never inserted
    for got, want in zip((slots, scores, rows), ref):
        assert torch.equal(got.cpu(), want)
    assert torch.equal(torch.stack(ht.lookup(b, probe, backend="triton")), torch.stack((slots, scores)))


def test_table_on_triton_matches_numba():
    kw = {"dim": 3, "init_capacity": 64, "max_capacity": 512, "bucket_size": 16, "evict_strategy": EvictStrategy.LFU}
    tri, ref = HashTable(backend="triton", device=DEVICE, **kw), HashTable(backend="numba", device="cpu", **kw)
    rng = np.random.default_rng(5)
    for _ in range(3):
        keys = torch.from_numpy(rng.choice(400, 100))  # duplicates within the batch
        values = torch.from_numpy(rng.normal(size=(100, 3)).astype(np.float32))
        for t in (tri, ref):
            t.insert_or_assign(keys, values)
    probe = torch.arange(450)
    got, want = tri.find(probe), ref.find(probe)
    assert tri.capacity() == ref.capacity() == 512
    for a, b in zip(got, want):
        assert torch.equal(a.cpu(), b)
    assert torch.equal(tri.contains(probe).cpu(), ref.contains(probe))
    ek, _, _ = tri.insert_and_evict(torch.tensor([1000, 1001]), torch.ones(2, 3))
    assert len(ek) == 0 and tri.contains(torch.tensor([1000, 1001])).all()
