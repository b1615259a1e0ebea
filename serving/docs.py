"""`/docs`: Swagger UI from pinned copies served by the service itself.

FastAPI's default page loads Swagger UI from a CDN, unpinned and without integrity
hashes, and the service's own Content-Security-Policy (`default-src 'none'`) blocks it, so
the page was blank. Here the files ship in the package (`serving/static`, see PINNED.md
there), are checked against their SHA-256 at start, carry Subresource Integrity
attributes, and the page's CSP (`DOCS_CSP`) admits exactly this origin's scripts and
styles: no inline script (the start-up code is a file), no other host. ReDoc is off.
"""

from __future__ import annotations

import base64
import hashlib
import html
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse

STATIC = Path(__file__).parent / "static"
DOCS_PATH = "/docs"
ASSET_PREFIX = DOCS_PATH + "/"
SWAGGER_UI_VERSION = "5.35.0"
# Pinned copies of swagger-ui-dist (npm); the init script is this project's own.
PINNED = {
    "swagger-ui-bundle.js": "e6a898692f2d768e807c3ba4626068a69a2c5dd960dd6c76f3e4d3a3de180af2",
    "swagger-ui.css": "5ed08757e53da3e026d6cbecc61fe5d43585c9560b302d534ad56692519a273d",
}
FILES = {
    "swagger-ui-bundle.js": STATIC / "swagger-ui" / "swagger-ui-bundle.js",
    "swagger-ui.css": STATIC / "swagger-ui" / "swagger-ui.css",
    "docs-init.js": STATIC / "docs-init.js",
}
CONTENT_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}

log = logging.getLogger("serving")


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    integrity: str  # Subresource Integrity value (sha384)


def load_assets() -> dict[str, Asset] | None:
    """The files, or None (with one error line) when a pinned one is missing or differs."""
    assets = {}
    for name, path in FILES.items():
        try:
            body = path.read_bytes()
        except OSError as exc:
            log.error("/docs is off: cannot read %s (%s); reinstall the package", path, exc)
            return None
        pinned = PINNED.get(name)
        if pinned is not None and hashlib.sha256(body).hexdigest() != pinned:
            log.error("/docs is off: %s does not match its pinned SHA-256 %s; restore it from "
                      "swagger-ui-dist %s (see %s)", path, pinned, SWAGGER_UI_VERSION,
                      STATIC / "swagger-ui" / "PINNED.md")  # fmt: skip
            return None
        digest = base64.b64encode(hashlib.sha384(body).digest()).decode()
        assets[name] = Asset(body, CONTENT_TYPES[path.suffix], f"sha384-{digest}")
    return assets


def page(title: str, assets: dict[str, Asset]) -> str:
    """Relative URLs: the page works at /docs and behind a proxy's path prefix alike."""

    def src(name: str) -> str:
        return f'"docs/{name}" integrity="{assets[name].integrity}"'

    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(title)} - Swagger UI</title>
<link rel="stylesheet" href={src("swagger-ui.css")}>
</head>
<body>
<div id="swagger-ui" data-openapi-url="openapi.json"></div>
<script src={src("swagger-ui-bundle.js")}></script>
<script src={src("docs-init.js")}></script>
</body>
</html>
"""


def install_docs(app: FastAPI) -> None:
    """GET /docs and its assets under /docs/: no key needed, not in the OpenAPI document
    (plain routes, like FastAPI's own docs pages)."""
    assets = load_assets()
    if assets is None:
        return
    text = page(app.title, assets)

    async def docs(request: Request) -> Response:
        return HTMLResponse(text)

    app.add_route(DOCS_PATH, docs, methods=["GET"], include_in_schema=False)
    for name, asset in assets.items():
        app.add_route(ASSET_PREFIX + name, _responder(asset), methods=["GET"],
                      include_in_schema=False)  # fmt: skip


def _responder(asset: Asset) -> Callable[[Request], Awaitable[Response]]:
    async def serve(request: Request) -> Response:
        return Response(asset.body, media_type=asset.media_type)

    return serve
