"""One small stored taxonomy of GloVe words, one browser server over it, and one headless
Chromium for the whole session.

The taxonomy is fitted on the first 3,000 GloVe words (the demo's data, cosine, 6 x 4 nodes) and
labelled with the demo's own words table (joined on the row ordinal), so what the tests search
for is what a user of the demo sees. Chromium is Debian's (`apt-get install -y chromium
chromium-driver`), driven by Selenium through /usr/bin/chromedriver: Selenium's own browser
downloads cannot work offline. Without it the tests fail, naming the command; they never skip.
"""

import shutil
import socket
import threading
import time

import numpy as np
import pytest

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
INSTALL = "apt-get install -y chromium chromium-driver  (as root; ./run.sh test does it)"
N_WORDS = 3000


@pytest.fixture(scope="session")
def glove_taxonomy(tmp_path_factory):
    """(storage URI, words table path, the words) of a 2-level taxonomy of 3,000 GloVe words."""
    import pyarrow.parquet as pq

    from mega_taxonomy import TaxonomyEngine
    from mega_taxonomy._estimator import as_source
    from mega_taxonomy.demo import glove_files

    vectors, words_table = glove_files()
    X = np.asarray(as_source(str(vectors)).take(np.arange(N_WORDS)))
    storage = str(tmp_path_factory.mktemp("web") / "glove")
    # (levels on every row: the tests name nodes and words of this tree)
    TaxonomyEngine(n_levels=2, branching_factor=[6, 4], metric="cosine", max_iter=5, device="cpu",
                   storage_uri=storage, members=20, max_train_points_per_centroid=None).fit(X)
    words = pq.read_table(words_table, columns=["index"]).column("index").to_pylist()
    return storage, str(words_table), words


@pytest.fixture(scope="session")
def view(glove_taxonomy):
    from mega_taxonomy.web import Labels, TaxonomyView

    storage, words_table, _ = glove_taxonomy
    return TaxonomyView(storage, labels=Labels(words_table, "index"))


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def free_port():
    """A TCP port free on 127.0.0.1 just now."""
    return unused_port()


@pytest.fixture(scope="session")
def server(view):
    """The browser's server on 127.0.0.1 (a thread of this process): ``(host, port)``."""
    import uvicorn

    from mega_taxonomy.web.server import create_app

    port = unused_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(view), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("the browser's server did not start within 20 s")
        time.sleep(0.05)
    yield "127.0.0.1", port
    srv.should_exit = True
    thread.join(10)


def chrome(width=1400, height=1100):
    """A headless Chromium driven by Selenium, or a failure naming the command that installs it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: the browser tests need Debian's Chromium: {INSTALL}")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}", "--disable-extensions", "--no-first-run"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(30)
    return driver


@pytest.fixture(scope="session")
def browser():
    driver = chrome()
    yield driver
    driver.quit()
