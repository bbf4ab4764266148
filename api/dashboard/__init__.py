"""The web dashboard: static files (plain ES modules, uPlot vendored from npm) served by the API.

`/` is the page (public: it holds no data, every request it makes sends the user's API key as the
Bearer header to the public /v1 endpoints); `/dashboard/...` are its scripts, styles and vendored
libraries. Nothing here is a private API.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).with_name("static")


def mount_dashboard(app: FastAPI) -> None:
    """Serve the page at `/` and its assets under `/dashboard/`."""

    @app.get("/", include_in_schema=False)
    def dashboard_page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/dashboard", StaticFiles(directory=STATIC_DIR), name="dashboard")
