"""Every `>>>` example in the public modules runs and prints what it says (STYLE.md, rule 6)."""

import doctest
import importlib

import pytest

MODULES = ["mega_taxonomy.cluster.kmeans", "mega_taxonomy.cluster.gmm", "mega_taxonomy.ops.gmm_estep",
           "mega_taxonomy.ops.assign", "mega_taxonomy.ops.grouped_assign", "mega_taxonomy.ops.probe",
           "mega_taxonomy.index.ivf",
           "mega_taxonomy.taxonomy.engine", "mega_taxonomy.taxonomy.path_cache", "mega_taxonomy.storage.store",
           "mega_taxonomy.storage.checkpoint", "mega_taxonomy.taxonomy.config", "mega_taxonomy.io.sources",
           "mega_taxonomy._estimator", "mega_taxonomy.runtime.iterate",
           "mega_taxonomy.runtime.local", "mega_taxonomy.runtime.collective", "mega_taxonomy.runtime.ray.actors",
           "mega_taxonomy.runtime.ray.schedule", "mega_taxonomy.io.shards", "mega_taxonomy.io.discovery",
           "mega_taxonomy.kv.table", "mega_taxonomy.ops.hash_table", "mega_taxonomy.web.stats",
           "mega_taxonomy.web.labels", "mega_taxonomy.sizes", "mega_taxonomy.ops.knn",
           "mega_taxonomy.index.kdtree",
           "mega_taxonomy.index.panda", "mega_taxonomy.index.routing",
           "mega_taxonomy.learn.classifier", "mega_taxonomy.learn.regressor", "mega_taxonomy.learn.multilabel",
           "mega_taxonomy.learn.clusterer", "mega_taxonomy.learn.distance", "mega_taxonomy.learn.soft"]


@pytest.mark.parametrize("name", MODULES)
def test_examples(name):
    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted > 0 and result.failed == 0
