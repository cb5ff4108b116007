"""A fresh CPU set-up gets the CPU build of torch and no CUDA package.

pip resolves the project with every extra (``.[all]``) under constraints-cpu.txt as on an empty
machine (``--dry-run --ignore-installed --report``), and the report is checked: torch is the
``+cpu`` build, and no ``nvidia-*`` or ``cuda-*`` package would be installed. Run by .ci/run
before the tests; ``python .ci/check_cpu_install.py [PYTHON]``.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CUDA = re.compile(r"^(nvidia-|cuda-|cupy|pytorch-triton)", re.IGNORECASE)


def resolve(python, extra_args=()):
    """The packages pip would install for ``.[all]`` on an empty machine: {name: version}."""
    command = [python, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--report", "-",
               "-c", str(ROOT / "constraints-cpu.txt"), *extra_args, "-e", f"{ROOT}[all]"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        return None, done.stderr
    report = json.loads(done.stdout)
    return {item["metadata"]["name"].lower(): item["metadata"]["version"] for item in report["install"]}, ""


def main():
    python = sys.argv[1] if len(sys.argv) > 1 else sys.executable
    packages, error = resolve(python)
    if packages is None:  # no local CPU wheel: the index run.sh falls back on
        index = os.environ.get("TORCH_INDEX", "https://download.pytorch.org/whl/cpu")
        packages, error = resolve(python, ["--extra-index-url", index])
    if packages is None:
        sys.exit(f"check_cpu_install: pip could not resolve .[all] under constraints-cpu.txt:\n{error}")
    cuda = sorted(name for name in packages if CUDA.match(name))
    torch = packages.get("torch", "")
    problems = []
    if cuda:
        problems.append(f"CUDA packages would be installed: {', '.join(cuda)}")
    if not torch.endswith("+cpu"):
        problems.append(f"torch {torch or '(none)'} is not the CPU build")
    if problems:
        sys.exit("check_cpu_install: " + "; ".join(problems))
    print(f"check_cpu_install: {len(packages)} packages, torch {torch}, triton {packages.get('triton')}, "
          "no CUDA package")


if __name__ == "__main__":
    main()
