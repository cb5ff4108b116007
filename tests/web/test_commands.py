"""``mega-taxonomy serve`` and ``mega-taxonomy report``, and the web layer's imports."""

import ast
import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from click.testing import CliRunner
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from mega_taxonomy.cli import main

WEB = Path(__file__).resolve().parents[2] / "src" / "mega_taxonomy" / "web"


def test_report_is_one_self_contained_file(glove_taxonomy, tmp_path, browser):
    storage, words_table, _ = glove_taxonomy
    out = tmp_path / "report.html"
    result = CliRunner().invoke(main, ["report", storage, "--out", str(out), "--labels", words_table,
                                       "--label-column", "index"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert page.count("<script") >= 4 and "Plotly.newPlot" in page  # sunburst, treemap, one histogram a level
    # plotly's JS is in the file: no script or stylesheet is fetched from anywhere.
    assert not re.findall(r"<script[^>]*\bsrc=", page) and not re.findall(r"<link[^>]*\bhref=", page)
    assert len(page) > 3_000_000
    # It draws, offline, in the headless browser: 2 charts and a histogram a level.
    browser.get(out.as_uri())
    WebDriverWait(browser, 20).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".main-svg")) >= 4 * 2)
    assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert "level 1: nodes by size" in page and "<td>0-0</td>" in page and "even, so, make" in page


def test_labels_need_their_column(glove_taxonomy, tmp_path):
    result = CliRunner().invoke(main, ["report", glove_taxonomy[0], "--out", str(tmp_path / "r.html"),
                                       "--labels", glove_taxonomy[1]])
    assert result.exit_code == 2 and "--labels and --label-column go together" in result.output


def test_serve_listens_on_loopback(glove_taxonomy, free_port):
    port = free_port
    command = [sys.executable, "-c", "from mega_taxonomy.cli import main; main()", "serve", glove_taxonomy[0],
               "--port", str(port), "--labels", glove_taxonomy[1], "--label-column", "index"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, body = time.monotonic() + 60, None
        while body is None and time.monotonic() < deadline and process.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/search?q=king", timeout=5) as r:
                    body = json.loads(r.read())
            except OSError:
                time.sleep(0.2)
        assert body is not None, f"serve did not answer: {process.poll()}"
        assert body["hits"][0]["label"] == "king"
    finally:
        process.terminate()
        out = process.communicate(timeout=20)[0]
    assert f"at http://127.0.0.1:{port}/" in out


def test_web_imports_nothing_of_the_fitting_machinery():
    """web/ reads stored state: within the package it imports storage/, errors, the tree and the
    command line's shared options and the size statistics (``sizes.py``, numpy alone) only."""
    allowed = {"mega_taxonomy.storage", "mega_taxonomy.storage.schema", "mega_taxonomy.errors",
               "mega_taxonomy.taxonomy.tree", "mega_taxonomy.cli_options", "mega_taxonomy.sizes"}
    for file in WEB.glob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                continue  # web's own modules
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                name = f"mega_taxonomy.{node.module}"
                assert node.level == 2 and name in allowed, f"{file.name} imports {'.' * node.level}{node.module}"
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
                assert not any(n.startswith("mega_taxonomy") for n in names), f"{file.name}: absolute import"
