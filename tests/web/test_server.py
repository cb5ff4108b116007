"""Bad requests to the real server on 127.0.0.1 get 4xx answers, and it keeps serving.

Requests go through http.client with the path exactly as written: a browser or httpx would
normalize ``..`` away before sending."""

import http.client
import json

import pytest


def get(server, path, method="GET", host=None):
    conn = http.client.HTTPConnection(*server, timeout=10)
    try:
        conn.putrequest(method, path, skip_host=host is not None, skip_accept_encoding=True)
        if host is not None:
            conn.putheader("Host", host)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.read(), dict(response.getheaders())
    finally:
        conn.close()


@pytest.mark.parametrize("path, status", [
    ("/api/nodes/0-999999", 404),              # unknown node
    ("/api/nodes/7-0", 404),                   # unknown level
    ("/api/nodes/0-1x", 404),                  # malformed keys
    ("/api/nodes/-1-0", 404),
    ("/api/nodes/0-00001", 404),
    ("/api/nodes/0-99999999999999999999999", 404),
    ("/api/nodes/0-999999/children", 404),
    ("/api/nodes/0-0/children?limit=1000000", 400),   # huge page sizes
    ("/api/nodes/0-0/children?limit=0", 400),
    ("/api/nodes/0-0/children?offset=-5", 400),
    ("/api/nodes/0-0/children?limit=1e9", 400),
    ("/api/nodes/0-0/members?limit=999999999999", 400),
    ("/api/nodes/0-0/treemap?depth=50", 400),
    ("/api/ids/987654321", 404),               # unknown and malformed ids
    ("/api/ids/12abc", 404),
    ("/api/ids/99999999999999999999999999", 404),
    ("/api/search?q=", 400),
    ("/api/search?q=" + "a" * 300, 400),
    ("/api/search?q=king&limit=100000", 400),
    ("/static/../view.py", 404),               # path traversal, plain and encoded
    ("/static/..%2fview.py", 404),
    ("/static/%2e%2e/%2e%2e/storage/store.py", 404),
    ("/static/%2e%2e%2fserver.py", 404),
    ("/../../../etc/passwd", 404),
    ("/%2e%2e/%2e%2e/etc/passwd", 404),
    ("/static/", 404),
    ("/static/view.py", 404),
    ("/index.html", 404),                      # unknown paths: no fallback to the page
    ("/api/nodes", 404),
    ("/api/unknown", 404),
])
def test_bad_requests_get_4xx(server, path, status):
    got, body, _ = get(server, path)
    assert got == status, body[:200]
    if path.startswith("/api/"):
        assert json.loads(body)["status"] == status
    assert b"<html" not in body and b"def " not in body


def test_ids_are_located_and_unknown_ids_find_nothing(server, glove_taxonomy):
    status, body, _ = get(server, "/api/ids/691")
    assert status == 200 and json.loads(body)["label"] == glove_taxonomy[2][691] == "king"
    status, body, _ = get(server, "/api/search?q=987654321")
    assert status == 200 and json.loads(body)["hits"] == []


def test_writes_and_foreign_hosts_are_refused(server):
    assert get(server, "/api/taxonomy", method="POST")[0] == 405
    assert get(server, "/api/taxonomy", method="DELETE")[0] == 405
    assert get(server, "/api/taxonomy", host="evil.example")[0] == 400  # DNS rebinding


def test_still_serving_after_bad_requests(server):
    for _ in range(3):
        get(server, "/static/%2e%2e/%2e%2e/x")
        get(server, "/api/nodes/0-0/children?limit=99999999")
    status, body, headers = get(server, "/api/taxonomy")
    assert status == 200 and json.loads(body)["rows"] == 3000
    assert headers["content-security-policy"].startswith("default-src 'self'")
    status, body, _ = get(server, "/")
    assert status == 200 and b"<title>mega-taxonomy browser</title>" in body
    status, body, headers = get(server, "/static/plotly.min.js")
    assert status == 200 and len(body) > 1_000_000 and headers["content-type"].startswith("text/javascript")
