"""The taxonomy browser: a small read-only Starlette app over a :class:`TaxonomyView`.

It serves its own static page (``web/static``: HTML, JS, CSS; plotly's JS from the installed
plotly package, nothing from the internet) and JSON about the tree, and nothing else:

``GET /api/taxonomy``
    rows, levels (nodes, imbalance, size histogram per level), parameters.
``GET /api/nodes/{key}``
    a node (``root`` or ``LEVEL-NODE``): size, path, parent, rank among siblings, children's imbalance.
``GET /api/nodes/{key}/children?offset=0&limit=100``
    a page of its children, largest first (``limit`` <= 1000).
``GET /api/nodes/{key}/members?limit=20``
    its nearest stored members, nearest first, with labels (``limit`` <= 1000).
``GET /api/nodes/{key}/treemap?depth=2&limit=40``
    a bounded subtree for a treemap or sunburst (``depth`` <= 3, ``limit`` <= 200 a node).
``GET /api/ids/{id}``
    the row of that id: its label and path (404 for an id no row has).
``GET /api/search?q=WORD&limit=20``
    rows whose label is (or starts with) WORD, or the row of id WORD, each with its path.

Unknown paths, nodes and ids answer 404, malformed parameters 400, other methods 405; static
files are a fixed list of names (no path is ever joined from a request, so ``..`` cannot reach
anything). Host headers other than the bound host and localhost are refused (400), so a page of
another site cannot reach the server through DNS rebinding.
"""

from __future__ import annotations

import logging
import threading
from importlib import resources
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Route

from .view import NotFound, TaxonomyView

logger = logging.getLogger(__name__)

MAX_PAGE, MAX_MEMBERS, MAX_DEPTH, MAX_TREEMAP, MAX_HITS, MAX_QUERY = 1000, 1000, 3, 200, 100, 200
STATIC = Path(__file__).resolve().parent / "static"
_CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


def static_files() -> dict[str, tuple[Path, str]]:
    """Name -> (file, media type) of everything the server may send besides JSON."""
    plotly = Path(str(resources.files("plotly") / "package_data" / "plotly.min.js"))
    return {
        "index.html": (STATIC / "index.html", "text/html; charset=utf-8"),
        "app.js": (STATIC / "app.js", "text/javascript; charset=utf-8"),
        "style.css": (STATIC / "style.css", "text/css; charset=utf-8"),
        "plotly.min.js": (plotly, "text/javascript; charset=utf-8"),
    }


def _int(request: Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query_params.get(name)
    if text is None:
        return default
    if not (text.isascii() and text.isdigit()) or len(text) > 9:
        raise HTTPException(400, f"{name} must be a whole number from {low} to {high}, got {text[:20]!r}")
    value = int(text)
    if not low <= value <= high:
        raise HTTPException(400, f"{name} must be from {low} to {high}, got {value}")
    return value


def create_app(view: TaxonomyView, *, host: str = "127.0.0.1") -> Starlette:
    """The browser's app over ``view`` (for ``uvicorn``, or Starlette's TestClient)."""
    files = static_files()
    lock = threading.Lock()  # the view loads members and assignments lazily: once, not per thread

    def api(compute):
        def endpoint(request: Request):
            try:
                with lock:
                    return JSONResponse(compute(request), headers={"Cache-Control": "no-store"})
            except NotFound as exc:
                raise HTTPException(404, str(exc)) from None
        return endpoint

    def static(request: Request):
        name = request.path_params.get("name", "index.html")
        if name not in files:
            raise HTTPException(404, "not found")
        path, media = files[name]
        return FileResponse(path, media_type=media)

    def key(request):
        return request.path_params["key"]

    def search(request):
        query = request.query_params.get("q", "")
        if not query.strip() or len(query) > MAX_QUERY:
            raise HTTPException(400, f"q must be 1 to {MAX_QUERY} characters")
        return view.search(query, _int(request, "limit", 20, 1, MAX_HITS))

    routes = [
        Route("/", static),
        Route("/static/{name}", static),
        Route("/api/taxonomy", api(lambda r: view.summary())),
        Route("/api/nodes/{key}", api(lambda r: view.node(key(r)))),
        Route("/api/nodes/{key}/children", api(lambda r: view.children(
            key(r), _int(r, "offset", 0, 0, 10**9), _int(r, "limit", 100, 1, MAX_PAGE)))),
        Route("/api/nodes/{key}/members", api(lambda r: view.members(key(r), _int(r, "limit", 20, 1, MAX_MEMBERS)))),
        Route("/api/nodes/{key}/treemap", api(lambda r: view.treemap(
            key(r), _int(r, "depth", 2, 1, MAX_DEPTH), _int(r, "limit", 40, 1, MAX_TREEMAP)))),
        Route("/api/ids/{id}", api(lambda r: view.locate(r.path_params["id"]))),
        Route("/api/search", api(search)),
    ]
    hosts = ["*"] if host in ("0.0.0.0", "::") else sorted({host, "127.0.0.1", "localhost", "[::1]"})

    async def http_error(request, exc):
        return JSONResponse({"error": exc.detail, "status": exc.status_code}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    app = Starlette(routes=routes, middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=hosts)],
                    exception_handlers={HTTPException: http_error})

    async def secure(scope, receive, send):
        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [
                    (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                    (b"content-security-policy", _CSP.encode())]
            await send(message)
        await app(scope, receive, send_with_headers if scope["type"] == "http" else send)

    secure.app = app
    return secure


def serve(view: TaxonomyView, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve the browser until interrupted."""
    import uvicorn

    uvicorn.run(create_app(view, host=host), host=host, port=port, log_level="warning")
