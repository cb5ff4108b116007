"""Shared benchmark plumbing: machine description, timing in a child process, the JSON schema of
DESIGN.md (Contracts, Benchmarks)."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine(packages=("mega-taxonomy", "torch", "triton", "numpy", "faiss-cpu", "scikit-learn", "pyarrow",
                      "flash-kmeans", "fastkmeans")) -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    versions = {"python": platform.python_version()}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu, "platform": platform.platform(), "versions": versions}


def peak_rss_bytes() -> int:
    """Peak resident memory of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_child(script: str, args: list[str]) -> dict:
    """Run one case in a fresh process, so that peak memory is its own; it prints one JSON line."""
    out = subprocess.run([sys.executable, script, *args], check=False, capture_output=True, text=True)
    if out.returncode:
        sys.stderr.write(out.stderr[-4000:])
        out.check_returncode()
    return json.loads(out.stdout.strip().splitlines()[-1])


def write(name: str, params: dict, results: list[dict], speedups: dict, command: str, path=None) -> Path:
    """Write ``benchmarks/results/<name>.json`` (or ``path``: smoke runs go elsewhere)."""
    path = RESULTS / f"{name}.json" if path is None else Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": name,
        "command": command,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "params": params,
        "results": results,
        "speedups": speedups,
    }
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path


def table(results: list[dict], columns: list[str]) -> str:
    rows = [columns] + [[_fmt(r.get(c)) for c in columns] for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
