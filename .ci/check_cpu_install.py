"""A fresh CPU set-up gets the CPU build of torch and no CUDA package.

pip resolves the project with every extra (``.[all]``), and with the demo's only (``.[demo]``),
under constraints-cpu.txt as on an empty machine (``--dry-run --ignore-installed --report``), and
the reports are checked: torch is the ``+cpu`` build, no ``nvidia-*`` or ``cuda-*`` package would
be installed, and the demo gets no test tool. Run by .ci/run before the tests;
``python .ci/check_cpu_install.py [PYTHON]``.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CUDA = re.compile(r"^(nvidia-|cuda-|cupy|pytorch-triton)", re.IGNORECASE)
TEST_TOOLS = {"pytest", "moto", "faiss-cpu", "ray", "boto3", "triton"}


def resolve(python, extras):
    """The packages pip would install for ``.[extras]`` on an empty machine: {name: version}."""
    command = [python, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--report", "-",
               "-c", str(ROOT / "constraints-cpu.txt"), "-e", f"{ROOT}[{extras}]"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0 and "No matching distribution found for torch" in done.stderr:
        # No local CPU wheel: the index run.sh falls back on.
        index = os.environ.get("TORCH_INDEX", "https://download.pytorch.org/whl/cpu")
        done = subprocess.run(command[:-2] + ["--extra-index-url", index] + command[-2:],
                              capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        sys.exit(f"check_cpu_install: pip could not resolve .[{extras}] under constraints-cpu.txt:\n{done.stderr}")
    report = json.loads(done.stdout)
    return {item["metadata"]["name"].lower(): item["metadata"]["version"] for item in report["install"]}


def main():
    python = sys.argv[1] if len(sys.argv) > 1 else sys.executable
    problems = []
    for extras in ("all", "demo"):
        packages = resolve(python, extras)
        cuda = sorted(name for name in packages if CUDA.match(name))
        torch = packages.get("torch", "")
        if cuda:
            problems.append(f".[{extras}] would install CUDA packages: {', '.join(cuda)}")
        if not torch.endswith("+cpu"):
            problems.append(f".[{extras}] would install torch {torch or '(none)'}, not the CPU build")
        if extras == "demo" and (tools := sorted(TEST_TOOLS & set(packages))):
            problems.append(f".[demo] would install test tools: {', '.join(tools)}")
        print(f"check_cpu_install: .[{extras}]: {len(packages)} packages, torch {torch}, "
              f"triton {packages.get('triton', '(none)')}")
    if problems:
        sys.exit("check_cpu_install: " + "; ".join(problems))
    print("check_cpu_install: the CPU torch, no CUDA package, no test tool for the demo")


if __name__ == "__main__":
    main()
