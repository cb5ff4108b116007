"""The README's quick start runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_quick_start_runs(tmp_path, monkeypatch):
    section = README.read_text().split("## Quick start", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    monkeypatch.chdir(tmp_path)  # it writes out/tax
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["paths"].shape == (5, 2) and namespace["ids"].shape == (5, 10)
    assert len(namespace["sample"]) == 1_000 and namespace["km"].cluster_centers_.shape == (64, 32)


def test_prototype_learners_example_runs():
    section = README.read_text().split("Prototype learners (scikit-learn estimators", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["proba"].shape == (5, 2)
    assert (namespace["stream"].predict(namespace["X"]) == namespace["y"]).mean() > 0.85
