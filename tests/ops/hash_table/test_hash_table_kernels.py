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


def test_upserts_first_launches_are_the_twins_locate_and_lookup():
    """``locate_triton``: every key's sort key (the twin's bucket times 2bs, plus the key's position
    in it or bs where missing; bs for every key of a bucket where one is missing when the batch
    inserts), its slot as the table holds it (the twin's lookup), its status (FOUND or MISSING) and
    whether found."""
    from mega_taxonomy.ops.hash_table.triton import locate_triton

    keys = torch.cat([torch.tensor([0, 1, -1, -(2**63), 2**63 - 1]),
                      torch.randint(-(2**63), 2**63 - 1, (3000,), dtype=torch.int64)])
    for nb, bs in ((1, 128), (8, 16), (1 << 16, 128)):
        b = ht.Buckets.allocate(nb, bs, -2)
        ht.upsert(b, keys[::7], torch.arange(len(keys[::7])), ht.SCORE_SET, ht.OP_INSERT_OR_ASSIGN, backend="torch")
        bucket, _ = ht.locate(keys, nb, bs)
        expected_slots = ht.lookup_reference(b, keys)[0]
        found = expected_slots >= 0
        missing_in = torch.zeros(nb, dtype=torch.bool).index_fill_(0, bucket[~found], True)
        on_device = ht.Buckets(*(t.to(DEVICE) for t in (b.keys, b.digests, b.scores, b.sizes)), b.empty)
        for inserting in (False, True):
            got, slots, status, founds = locate_triton(on_device, keys.to(DEVICE), inserting)
            assert got.dtype == torch.int32
            pos = torch.where(found & ~(missing_in[bucket] & inserting), expected_slots % bs, bs)
            assert torch.equal(got.cpu().long(), bucket * 2 * bs + pos)
            assert torch.equal(slots.cpu(), expected_slots)
            assert torch.equal(founds.cpu(), found)
            assert torch.equal(status.cpu(), torch.where(found, ht.FOUND, ht.MISSING))
        assert 0 < int(found.sum()) <= len(keys[::7]) and bool(missing_in.any())


OPS = [nk.OP_INSERT_OR_ASSIGN, nk.OP_INSERT_AND_EVICT, nk.OP_FIND_OR_INSERT, nk.OP_ASSIGN, nk.OP_ACCUM,
       nk.OP_RESTORE]


def numba_upsert(b, storage, op, keys, values, desired, rule, flags):
    """numba's loop on a table on the host: (out_values, slots, evicted keys, values, scores)."""
    n, dim = len(keys), storage.shape[1]
    out = [np.zeros((n, dim), np.float32), np.empty(n, np.int64), np.zeros(n, np.int64), np.zeros((n, dim), np.float32),
           np.zeros(n, np.int64)]
    n_ev = nk.upsert(b.keys.numpy(), b.digests.numpy(), b.scores.numpy(), b.sizes.numpy(), storage.numpy(),
                     np.empty((0, dim), np.float32), b.keys.shape[1], b.shift, b.empty, keys.numpy(),
                     values.numpy(), desired.numpy(), rule, flags.numpy(), op, *out)
    return out[0], out[1], out[2][:n_ev], out[3][:n_ev], out[4][:n_ev]


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("rule", [ht.SCORE_SET, ht.SCORE_ADD, ht.SCORE_EPOCH_ADD, ht.SCORE_KEEP])
def test_upsert_on_triton_and_the_twin_is_numbas_loop(op, rule):
    """Batches with repeated keys that fill 8 x 16 slots past full (evictions, refusals): the
    Triton launches (values moved in them) and the torch twin's rounds leave the table as numba's
    in-order loop does, bit for bit, and report the same slots, evictions and rows."""
    rng = np.random.default_rng(op * 3 + rule)
    tables = {name: ht.Buckets.allocate(8, 16, -1, device=DEVICE if name == "triton" else "cpu")
              for name in ("torch", "triton", "numba")}
    storage = {"triton": torch.zeros(128, 3, device=DEVICE), "numba": torch.zeros(128, 3)}
    evicted = 0
    for step in range(6):
        # plain inserts first, then the op: ASSIGN and ACCUM find the keys there, and full buckets
        this_op = nk.OP_INSERT_OR_ASSIGN if step < 2 else op
        keys = torch.from_numpy(rng.choice(200, 60))  # repeats
        desired = torch.from_numpy(rng.integers(-(2**63), 2**63 - 1, 60))  # all of uint64's range
        values = torch.from_numpy(rng.normal(size=(60, 3)).astype(np.float32))
        flags = torch.from_numpy(rng.integers(0, 2, 60).astype(bool))
        want = numba_upsert(tables["numba"], storage["numba"], this_op, keys, values, desired, rule, flags)
        twin = ht.upsert(tables["torch"], keys, desired, rule, this_op, flags, values, backend="torch")
        got = ht.upsert(tables["triton"], keys.to(DEVICE), desired.to(DEVICE), rule, this_op, flags.to(DEVICE),
                        values.to(DEVICE), storage["triton"], backend="triton")
        assert got.rank is None and twin.rank is not None  # values moved in the launch, or left to the caller
        for u in (twin, got):
            np.testing.assert_array_equal(u.slots.cpu().numpy(), want[1])
        assert torch.equal(got.status.cpu(), twin.status)
        if this_op == nk.OP_INSERT_AND_EVICT:  # numba lists evictions for this op alone
            e = ((twin.status == ht.EVICTED) | (twin.status == ht.REFUSED))
            assert len(want[2]) == int(e.sum())
            evicted += len(want[2])
            for u in (twin, got):
                np.testing.assert_array_equal(u.ev_keys.cpu()[e].numpy(), want[2])
                np.testing.assert_array_equal(u.ev_scores.cpu()[e].numpy(), want[4])
            np.testing.assert_array_equal(got.ev_values.cpu()[e].numpy(), want[3])
        if this_op == nk.OP_FIND_OR_INSERT:
            np.testing.assert_array_equal(got.out_values.cpu().numpy(), want[0])
        assert torch.equal(storage["triton"].cpu(), storage["numba"])
        assert tables["triton"]._claims is None or not tables["triton"]._claims.any()  # assign's, cleared
        for name in ("keys", "digests", "scores", "sizes"):
            assert torch.equal(getattr(tables["torch"], name), getattr(tables["triton"], name).cpu()), name
            assert torch.equal(getattr(tables["torch"], name), getattr(tables["numba"], name)), name
    assert int(tables["numba"].sizes.sum()) > 80 and (evicted > 0 or op != nk.OP_INSERT_AND_EVICT)
    probe = torch.cat([keys, torch.arange(50)])
    for a, b in zip(ht.lookup(tables["torch"], probe, backend="torch"),
                    ht.lookup(tables["triton"], probe.to(DEVICE), backend="triton")):
        assert torch.equal(a, b.cpu())


# each op under one score rule, every rule among them; ACCUM with values added
@pytest.mark.parametrize("op,rule", [(nk.OP_INSERT_OR_ASSIGN, ht.SCORE_SET), (nk.OP_INSERT_AND_EVICT, ht.SCORE_ADD),
                                     (nk.OP_FIND_OR_INSERT, ht.SCORE_EPOCH_ADD), (nk.OP_ACCUM, ht.SCORE_KEEP),
                                     (nk.OP_RESTORE, ht.SCORE_SET), (nk.OP_ACCUM, ht.SCORE_ADD),
                                     (nk.OP_ASSIGN, ht.SCORE_EPOCH_ADD), (nk.OP_ASSIGN, ht.SCORE_SET),
                                     (nk.OP_ASSIGN, ht.SCORE_ADD)])
def test_upsert_of_present_keys_at_once_is_numbas_loop(op, rule, monkeypatch):
    """Runs of keys present before the batch, a lane per occurrence (``_apply_found``), the
    others by the loop, leave the table and the outputs as numba's in-order loop does, bit for
    bit: batches of mostly present keys, repeated within runs (the last occurrence writes; ACCUM
    adds every flagged row in order), some missing, into buckets full and not, 16 lanes a program
    (runs across programs' edges); the loop's one program walks the list of the runs left to it 4
    at a time. assign by SET and ADD with the values in GPU memory takes no sort (its claims), and
    without them (host memory's tier) the sort: the same outcome."""
    from mega_taxonomy.ops.hash_table import triton as kernels

    monkeypatch.setattr(kernels, "BLOCK", 16)
    monkeypatch.setattr(kernels, "UPSERT_BLOCK", 4)
    monkeypatch.setattr(kernels, "UPSERT_PROGRAMS", 1)
    rng = np.random.default_rng(op * 5 + rule)
    # "rounds": values left to the caller (host memory's tier), the outcome alone from the kernel
    tables = {name: ht.Buckets.allocate(16, 16, -1, device="cpu" if name == "numba" else DEVICE)
              for name in ("triton", "rounds", "numba")}
    storage = {"triton": torch.zeros(256, 3, device=DEVICE), "numba": torch.zeros(256, 3)}
    stored = torch.from_numpy(rng.choice(10**6, 200, replace=False))
    for step in range(3):
        this_op = nk.OP_INSERT_OR_ASSIGN if step == 0 else op
        keys = stored if step == 0 else torch.from_numpy(np.where(
            rng.random(100) < 0.9, rng.choice(stored.numpy(), 100), rng.integers(10**6, 2 * 10**6, 100)))
        n = len(keys)
        desired = torch.from_numpy(rng.integers(-(2**63), 2**63 - 1, n))
        values = torch.from_numpy(rng.normal(size=(n, 3)).astype(np.float32))
        flags = torch.from_numpy(rng.integers(0, 2, n).astype(bool))
        want = numba_upsert(tables["numba"], storage["numba"], this_op, keys, values, desired, rule, flags)
        got = ht.upsert(tables["triton"], keys.to(DEVICE), desired.to(DEVICE), rule, this_op, flags.to(DEVICE),
                        values.to(DEVICE), storage["triton"], backend="triton")
        rounds = ht.upsert(tables["rounds"], keys.to(DEVICE), desired.to(DEVICE), rule, this_op, flags.to(DEVICE),
                           backend="triton")
        np.testing.assert_array_equal(got.slots.cpu().numpy(), want[1])
        assert torch.equal(rounds.slots, got.slots) and torch.equal(rounds.status, got.status)
        if this_op == nk.OP_FIND_OR_INSERT:
            np.testing.assert_array_equal(got.out_values.cpu().numpy(), want[0])
        if this_op == nk.OP_INSERT_AND_EVICT:
            e = (got.status == ht.EVICTED) | (got.status == ht.REFUSED)
            np.testing.assert_array_equal(got.ev_keys[e].cpu().numpy(), want[2])
            np.testing.assert_array_equal(got.ev_scores[e].cpu().numpy(), want[4])
        assert torch.equal(storage["triton"].cpu(), storage["numba"]), (rule, step)
        for name in ("keys", "digests", "scores", "sizes"):
            assert torch.equal(getattr(tables["triton"], name).cpu(), getattr(tables["numba"], name)), (rule, name)
            assert torch.equal(getattr(tables["rounds"], name), getattr(tables["triton"], name)), (rule, name)
        assert tables["triton"]._claims is None or not tables["triton"]._claims.any()
    assert (tables["triton"]._claims is not None) == (op == nk.OP_ASSIGN and rule != ht.SCORE_EPOCH_ADD)


def test_assign_of_a_batch_with_a_reserved_key_changes_nothing_and_clears_its_claims():
    """The lookup flags the reserved key and claims the present keys' slots; the claims' launch then
    writes nothing and clears them: the next assign of the same keys writes again."""
    b = ht.Buckets.allocate(4, 16, -1, device=DEVICE, reserved=(-4, -4))  # the table's default: -4 .. -1
    storage = torch.zeros(64, 2, device=DEVICE)
    keys = torch.tensor([3, 8, 13], device=DEVICE)
    ht.upsert(b, keys, torch.ones(3, dtype=torch.int64, device=DEVICE), ht.SCORE_SET, nk.OP_INSERT_OR_ASSIGN,
              values=torch.ones(3, 2, device=DEVICE), storage=storage, backend="triton")
    b.take_flag()
    before = (b.keys.clone(), b.scores.clone(), storage.clone())
    batch = torch.tensor([8, 13, 8, -4], device=DEVICE)
    desired = torch.full((4,), 7, dtype=torch.int64, device=DEVICE)
    ht.upsert(b, batch, desired, ht.SCORE_SET, nk.OP_ASSIGN, values=torch.full((4, 2), 5.0, device=DEVICE),
              storage=storage, backend="triton")
    assert b.take_flag() and not b.claims.any()
    assert torch.equal(b.keys, before[0]) and torch.equal(b.scores, before[1]) and torch.equal(storage, before[2])
    u = ht.upsert(b, batch[:3], desired[:3], ht.SCORE_SET, nk.OP_ASSIGN,
                  values=torch.arange(6.0, device=DEVICE).reshape(3, 2), storage=storage, backend="triton")
    assert u.status.tolist() == [ht.FOUND] * 3 and not b.take_flag() and not b.claims.any()
    slots = u.slots.tolist()
    assert storage[slots[0]].tolist() == [4.0, 5.0] and storage[slots[1]].tolist() == [2.0, 3.0]
    assert b.scores.view(-1)[slots].tolist() == [7, 7, 7]


def test_int64_sort_keys_give_the_same_upserts(monkeypatch):
    """Tables too large for int32 sort keys (nb * 2bs > 2**31) sort int64 ones: the same outcome."""
    from mega_taxonomy.ops.hash_table import triton as kernels

    monkeypatch.setattr(kernels, "INT32_SORT_KEYS", 0)
    test_upsert_of_present_keys_at_once_is_numbas_loop(nk.OP_ACCUM, ht.SCORE_ADD, monkeypatch)
    keys = torch.arange(100, device=DEVICE)
    assert kernels.locate_triton(ht.Buckets.allocate(4, 16, -1, device=DEVICE), keys)[0].dtype == torch.int64


@pytest.mark.parametrize("kernel", ["bytes", "words"])
@pytest.mark.parametrize("dim", [1, 8, 5, 100])
def test_lookup_with_values_reads_the_rows_of_the_found_keys(dim, kernel, monkeypatch):
    """The fused lookup (Triton: values read in the lookup's launch; digests compared a byte or
    a 4-byte word at a time) against the twin: rows of the found keys, zeros for the missing,
    slots and scores as ``lookup``'s; rows of 1 to 100 values."""
    from mega_taxonomy.ops.hash_table import triton as kernels

    monkeypatch.setattr(kernels, "LOOKUP", kernel)
    rng = np.random.default_rng(dim)
    b = ht.Buckets.allocate(8, 16, -1, device=DEVICE)
    keys = torch.from_numpy(rng.choice(10**6, 90, replace=False)).to(DEVICE)
    ht.upsert(b, keys, torch.arange(90, device=DEVICE), ht.SCORE_SET, ht.OP_INSERT_OR_ASSIGN, backend="triton")
    values = torch.from_numpy(rng.normal(size=(8 * 16, dim)).astype(np.float32)).to(DEVICE)
    probe = torch.cat([keys[::2], torch.arange(30, device=DEVICE)])
    slots, scores, rows = ht.lookup_values(b, probe, values, backend="triton")
    on_host = ht.Buckets(*(t.cpu() for t in (b.keys, b.digests, b.scores, b.sizes)), b.empty)
    ref = ht.lookup_values(on_host, probe.cpu(), values.cpu(), backend="torch")
    assert 40 <= int((slots >= 0).sum()) <= 45 and bool((rows[slots < 0] == 0).all())  # 30 keys never inserted
    for got, want in zip((slots, scores, rows), ref):
        assert torch.equal(got.cpu(), want)
    assert torch.equal(torch.stack(ht.lookup(b, probe, backend="triton")), torch.stack((slots, scores)))
    assert torch.equal(ht.lookup_slots(b, probe, backend="triton"), slots)  # no scores read
    for backend, table in (("triton", b), ("torch", on_host)):  # founds written beside the slots
        founds = torch.zeros(len(probe), dtype=torch.bool, device=table.keys.device)
        ht.lookup_slots(table, probe.to(table.keys.device), backend, founds)
        assert torch.equal(founds.cpu(), slots.cpu() >= 0)


@pytest.mark.parametrize("kernel", ["bytes", "words"])
def test_lookups_where_every_digest_collides(kernel, monkeypatch):
    """Keys chosen to share one digest byte: every slot of a bucket is a candidate, so a lookup
    compares keys until the match (or all of them, for a missing key), as the twin finds."""
    from mega_taxonomy.ops.hash_table import triton as kernels

    monkeypatch.setattr(kernels, "LOOKUP", kernel)
    pool = torch.arange(1, 300_000)
    _, digest = ht.locate(pool, 4, 32)
    same = pool[digest == 7]
    keys, absent = same[:4 * 32 - 8], same[4 * 32:4 * 32 + 40]
    b = ht.Buckets.allocate(4, 32, -1, device=DEVICE)
    ht.upsert(b, keys.to(DEVICE), torch.arange(len(keys), device=DEVICE), ht.SCORE_SET, ht.OP_INSERT_OR_ASSIGN,
              backend="triton")
    assert int(b.sizes.sum()) < len(keys)  # full buckets pushed some out
    probe = torch.cat([keys, absent])
    on_host = ht.Buckets(*(t.cpu() for t in (b.keys, b.digests, b.scores, b.sizes)), b.empty)
    want = ht.lookup(on_host, probe, backend="torch")
    got = ht.lookup(b, probe.to(DEVICE), backend="triton")
    assert int((want[0] >= 0).sum()) == int(b.sizes.sum())
    for a, w in zip(got, want):
        assert torch.equal(a.cpu(), w)


@pytest.mark.parametrize("fast_positions", [16, 4, 0])
def test_table_on_triton_matches_numba(fast_positions):
    """Values of all positions in GPU memory (moved in the launches), of 4 of 16 (hybrid: moved
    afterwards, round by round) or of none (pinned host memory where CUDA is)."""
    kw = {"dim": 3, "init_capacity": 64, "max_capacity": 512, "bucket_size": 16, "evict_strategy": EvictStrategy.LFU}
    tri = HashTable(backend="triton", device=DEVICE, max_hbm_for_vectors=fast_positions * 32 * 3 * 4, **kw)
    ref = HashTable(backend="numba", device="cpu", **kw)
    rng = np.random.default_rng(5)
    evicted = 0
    for step in range(5):
        keys = torch.from_numpy(rng.choice(700, 150))  # duplicates within the batch
        values = torch.from_numpy(rng.normal(size=(150, 3)).astype(np.float32))
        if step < 3:
            for t in (tri, ref):
                t.insert_or_assign(keys, values)
        else:  # and the calls that return rows, in full buckets
            got = tri.insert_and_evict(keys, values)
            for a, b in zip(got, ref.insert_and_evict(keys, values)):
                assert torch.equal(a.cpu(), b)
            evicted += len(got[0])
            for a, b in zip(tri.find_or_insert_ptr(keys), ref.find_or_insert_ptr(keys)):
                assert torch.equal(a.cpu(), b)
    probe = torch.arange(750)
    got, want = tri.find(probe), ref.find(probe)
    assert tri.capacity() == ref.capacity() == 512 and tri._v.k == fast_positions and evicted > 0
    for a, b in zip(got, want):
        assert torch.equal(a.cpu(), b)
    assert torch.equal(tri.contains(probe).cpu(), ref.contains(probe))
    assert torch.equal(tri.export_batch(512)[0].cpu(), ref.export_batch(512)[0])


def test_save_load_round_trip_between_the_gpu_and_the_host(tmp_path):
    """A table saved from GPU memory (the interpreter's where there is none) loads on the host with
    the same entries, and back."""
    kw = {"dim": 3, "init_capacity": 64, "max_capacity": 512, "bucket_size": 16, "evict_strategy": EvictStrategy.LRU}
    tri = HashTable(backend="triton", device=DEVICE, **kw)
    keys = torch.arange(300) * 7 + 3
    tri.insert_or_assign(keys, torch.from_numpy(np.random.default_rng(1).normal(size=(300, 3)).astype(np.float32)))
    tri.save(tmp_path / "from_gpu")
    host = HashTable(backend="numba", device="cpu", **kw)
    assert host.load(tmp_path / "from_gpu") == 300
    for a, b in zip(tri.find(keys), host.find(keys)):
        assert torch.equal(a.cpu(), b)
    host.save(tmp_path / "from_host")
    back = HashTable(backend="triton", device=DEVICE, **kw)
    assert back.load(tmp_path / "from_host") == 300
    for a, b in zip(back.export_batch(512), tri.export_batch(512)):
        assert torch.equal(a.cpu(), b.cpu())


@pytest.mark.parametrize("strategy", [EvictStrategy.LRU, EvictStrategy.LFU, EvictStrategy.EPOCH_LFU,
                                      EvictStrategy.CUSTOMIZED])
def test_every_call_on_triton_matches_numba(strategy):
    """Each strategy's score rules through every call of the table, growing and in full buckets
    (evictions in every strategy): the same entries, values and scores as numba's (an assign
    without scores keeps them)."""
    kw = {"dim": 2, "init_capacity": 32, "max_capacity": 128, "bucket_size": 16, "evict_strategy": strategy}
    tri = HashTable(backend="triton", device=DEVICE, **kw)
    ref = HashTable(backend="numba", device="cpu", **kw)
    rng = np.random.default_rng(len(strategy.name))
    takes_scores = strategy not in (EvictStrategy.LRU, EvictStrategy.EPOCH_LRU)

    def both(call, *args, **kwargs):
        got, want = getattr(tri, call)(*args, **kwargs), getattr(ref, call)(*args, **kwargs)
        if not isinstance(want, (tuple, torch.Tensor)):  # None, or a count
            assert got == want, call
            return want
        for a, b in zip(*((x,) if isinstance(x, torch.Tensor) else x for x in (got, want)), strict=True):
            assert torch.equal(a.cpu(), b), call
        return want

    evicted = 0
    for step in range(3):
        keys = torch.from_numpy(rng.choice(400, 120))  # duplicates within the batch
        values = torch.from_numpy(rng.normal(size=(120, 2)).astype(np.float32))
        scores = {"scores": torch.from_numpy(rng.integers(1, 50, 120))} if takes_scores else {}
        epoch = {"global_epoch": step} if strategy is EvictStrategy.EPOCH_LFU else {}
        both("insert_or_assign", keys[:60], values[:60], **{k: v[:60] for k, v in scores.items()}, **epoch)
        both("assign", keys[60:], values[60:], **epoch)  # no scores: the hits keep theirs
        both("accum_or_assign", keys, values, torch.from_numpy(rng.random(120) < 0.5), **scores, **epoch)
        both("find_or_insert", keys, values, **scores, **epoch)
        evicted += len(both("insert_and_evict", keys, values, **scores, **epoch)[0])
        both("erase", keys[::7])
        both("find", torch.arange(400))
    both("erase_if", 1, 0)
    assert tri.capacity() == ref.capacity() == 128 and tri.size() == ref.size() and evicted > 0
    both("export_batch", 128)


def test_no_key_has_the_free_slots_digest():
    """Keys whose hash has digest byte 0 take digest 1, so a free slot (digest 0) is never a
    candidate: they are stored and found like any other, and the empty key itself is never found
    in free slots, on every backend."""
    pool = torch.arange(1, 200_000)
    raw = (ht.shift_right_logical(ht.fmix64(pool), 32) & 0xFF)
    keys = torch.cat([pool[raw == 0][:20], pool[raw == 1][:20]])
    assert bool((ht.locate(keys, 4, 16)[1] == 1).all())
    assert not bool((ht.locate(pool, 4, 16)[1] == ht.EMPTY_DIGEST).any())
    for backend, device in (("torch", "cpu"), ("triton", DEVICE)):
        b = ht.Buckets.allocate(4, 16, -1, device=device)
        ht.upsert(b, keys.to(device), torch.arange(40, device=device), ht.SCORE_SET, ht.OP_INSERT_OR_ASSIGN,
                  backend=backend)
        assert int((b.digests == ht.EMPTY_DIGEST).sum()) == 64 - 40  # the free slots alone
        slots, scores = ht.lookup(b, torch.cat([keys, torch.tensor([-1])]).to(device), backend=backend)
        assert bool((slots[:40] >= 0).all()) and int(slots[40]) == -1
        assert torch.equal(scores[:40].cpu(), torch.arange(40))


def test_buckets_under_four_slots_take_the_twin():
    """The upsert kernel reads digests as 4-byte words: a table of 1- or 2-slot buckets upserts
    through the torch twin on the Triton backend, the same entries as numba's."""
    for bucket_size in (1, 2):
        kw = {"dim": 2, "init_capacity": 32, "max_capacity": 64, "bucket_size": bucket_size}
        tri, ref = HashTable(backend="triton", device=DEVICE, **kw), HashTable(backend="numba", device="cpu", **kw)
        keys = torch.from_numpy(np.random.default_rng(bucket_size).choice(100, 40))
        values = torch.arange(80, dtype=torch.float32).reshape(40, 2)
        for t in (tri, ref):
            t.insert_or_assign(keys, values)
        for a, b in zip(tri.find(torch.arange(100)), ref.find(torch.arange(100))):
            assert torch.equal(a.cpu(), b)


@pytest.mark.parametrize("bucket_size", [4, 32])
def test_strided_inputs_and_small_buckets_on_triton_match_numba(bucket_size):
    """Keys, values, scores and flags given as strided views (every other row), into tables of
    4-slot buckets (a word of digests a bucket) and 32-slot ones that fill and evict: every call's
    outcome and the entries are numba's."""
    kw = {"dim": 3, "init_capacity": 16, "max_capacity": 64, "bucket_size": bucket_size,
          "evict_strategy": EvictStrategy.LFU}
    tri, ref = HashTable(backend="triton", device=DEVICE, **kw), HashTable(backend="numba", device="cpu", **kw)
    rng = np.random.default_rng(bucket_size)
    for _ in range(3):
        keys = torch.from_numpy(rng.choice(300, 200))[::2]
        values = torch.from_numpy(rng.normal(size=(200, 3)).astype(np.float32))[::2]
        scores = torch.from_numpy(rng.integers(1, 50, 200))[::2]
        flags = torch.from_numpy(rng.random(200) < 0.5)[::2]
        for call, args in (("insert_or_assign", (keys, values, scores)), ("assign", (keys, values, scores)),
                           ("insert_and_evict", (keys, values, scores)),
                           ("accum_or_assign", (keys, values, flags, scores))):
            got, want = getattr(tri, call)(*args), getattr(ref, call)(*args)
            for a, b in zip(*((x,) if x is None or isinstance(x, torch.Tensor) else x for x in (got, want))):
                assert a is None and b is None or torch.equal(a.cpu(), b), call
    for a, b in zip(tri.export_batch(64), ref.export_batch(64)):
        assert torch.equal(a.cpu(), b)
