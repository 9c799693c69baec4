"""The web UI's static files (docs/ui.md), served at ``/ui/`` without authentication.

The files hold no data: the UI, running in the browser, calls the public API under ``/api/v1``
with the bearer token the user signed in with, so it can do nothing its user could not do with
curl. The build (``make ui``: ui/ with Vite) writes them to ``ui_dist`` next to this module; the
image builds them in a stage of its own. Where they are missing, ``/ui/`` says how to build them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

UI_DIR = Path(__file__).with_name("ui_dist")
# Everything from this origin only (no CDN: the UI works offline); inline style attributes are the
# graph library's way of placing nodes. No framing (clickjacking of the action buttons).
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
                               "form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


class UiFiles(StaticFiles):
    """Static files with the security headers; ``index.html`` is never cached (it names the hashed
    assets of the current build), the hashed assets are cached for good."""

    async def get_response(self, path: str, scope: Any) -> Any:
        response = await super().get_response(path, scope)
        response.headers.update(SECURITY_HEADERS)
        immutable = path.startswith("assets/") and response.status_code == 200
        response.headers["Cache-Control"] = "public, max-age=31536000, immutable" if immutable else "no-cache"
        return response


def mount_ui(app: FastAPI, ui_dir: str | None = None) -> None:
    """``/ui/`` serves the built UI (``ui_dir``, default :data:`UI_DIR`); ``/`` redirects there."""
    root = Path(ui_dir) if ui_dir else UI_DIR

    @app.get("/", include_in_schema=False)
    async def home() -> RedirectResponse:
        return RedirectResponse("/ui/", status_code=307)

    if (root / "index.html").is_file():
        app.mount("/ui", UiFiles(directory=root, html=True), name="ui")
        return

    @app.get("/ui/{path:path}", include_in_schema=False)
    async def not_built(path: str) -> JSONResponse:
        return JSONResponse({"error": {"reason": "NotFound", "message": f"the UI is not built into {root} "
                                       "(run `make ui`, or use the operator image, which has it)"}}, status_code=404)
