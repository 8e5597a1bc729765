"""The web page: static HTML/CSS/JS (ES modules, no build step) from api/web/, index at `/`, assets under /web/.

The page is a client of the public HTTP API like any other: it keeps the pasted API key in the browser's
session storage and sends it as the Bearer header, so it needs no route, cookie or session of its own.

Only `GET /` and the `/web` mount are added: mounting the folder at `/` would answer unknown `/v1/...` paths
and other methods with the static app's responses instead of the API's own 404 / 405 bodies.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

WEB_DIR = Path(__file__).resolve().parent / "web"
# The browser itself enforces that the page loads nothing from elsewhere: scripts, styles and requests from this
# origin only; images also from blob: (results and previews are fetched with the Bearer header, then shown).
CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def install_web_page(app: FastAPI) -> None:
    app.mount("/web", StaticFiles(directory=WEB_DIR), name="web")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        # no-cache: a browser revalidates the page after an upgrade instead of running stale modules
        return FileResponse(
            WEB_DIR / "index.html",
            media_type="text/html",
            headers={"Cache-Control": "no-cache", "Content-Security-Policy": CSP},
        )
