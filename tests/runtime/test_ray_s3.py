"""A taxonomy fitted on Ray end to end on object storage (moto S3 on 127.0.0.1): input parquet,
storage_uri and output on s3://, read and written by the workers; the secret key appears in no
manifest, no log record of the driver and no log file of the cluster."""

import glob
import json
import logging
import os

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray")

from mega_taxonomy.io import BLOCK_ROWS  # noqa: E402
from mega_taxonomy.runtime import LocalRuntime  # noqa: E402
from mega_taxonomy.runtime.ray import RayRuntime  # noqa: E402
from mega_taxonomy.taxonomy import TaxonomyEngine  # noqa: E402

pytestmark = pytest.mark.timeout(240)
SECRET = "testing-secret-key"  # the moto fixture's, passed explicitly here too


@pytest.mark.slow
def test_fit_on_s3_with_ray(ray_cluster, s3_bucket, tmp_path, caplog):
    _, temp_dir = ray_cluster
    bucket, options = s3_bucket
    options = {**options, "key": "testing-access-key", "secret": SECRET}
    X = np.random.default_rng(6).normal(size=(BLOCK_ROWS + 5000, 4)).astype(np.float32)
    for i, part in enumerate(np.array_split(X, 3)):
        emb = pa.FixedSizeListArray.from_arrays(pa.array(part.ravel()), 4)
        table = pa.table({"id": np.arange(len(part)) + 1000 * i * len(part), "emb": emb})
        with fsspec.open(f"{bucket}/input/part-{i}.parquet", "wb", **options) as f:
            pq.write_table(table, f)
    params = dict(n_levels=2, branching_factor=[3, 2], max_iter=3, tol=0, device="cpu", random_state=2, members=4,
                  id_column="id", storage_options=options)
    reference = TaxonomyEngine(**params, storage_uri=str(tmp_path / "ref"),
                               runtime=LocalRuntime("cpu", progress=False)).fit(f"{bucket}/input/*.parquet")
    with caplog.at_level(logging.DEBUG), RayRuntime(num_workers=2, state_uri=f"{bucket}/ray-state",
                                                    storage_options=options, broadcast_bytes=64,
                                                    progress=False) as runtime:
        engine = TaxonomyEngine(**params, storage_uri=f"{bucket}/tax", runtime=runtime)
        engine.fit(f"{bucket}/input/*.parquet", output=f"{bucket}/out")
        assert SECRET not in repr(runtime)
    for la, lb in zip(reference.tree_.levels, engine.tree_.levels):
        np.testing.assert_array_equal(la.centroids, lb.centroids)
    fs = fsspec.filesystem("s3", **options)
    out = pq.read_table(fs.open(f"{bucket}/out/assignments/part-00001.parquet"))
    assert out.column_names == ["id", "path", "distance"] and out.num_rows == 5000
    manifests = [fs.cat_file(f"{bucket}/{name}/manifest.json").decode() for name in ("tax", "out", "ray-state")]
    assert json.loads(manifests[0])["status"] == "done"
    assert json.loads(manifests[2])["files"] == {}  # centroids of every pass went through the Store, then away
    for text in manifests:
        assert SECRET not in text
    assert SECRET not in caplog.text
    logs = [p for p in glob.glob(f"{temp_dir}/session_latest/logs/**", recursive=True) if os.path.isfile(p)]
    assert logs
    for path in logs:
        with open(path, errors="replace") as f:
            assert SECRET not in f.read(), path
