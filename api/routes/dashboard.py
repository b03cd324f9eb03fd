"""The dashboard: static pages served by the API, fed only by the API (the
browser signs in with an API key, so its role decides what each person sees).
Charts are drawn by plotly.js, served from the `plotly` package installed from
PyPI: no CDN, so it works on an isolated network."""

from __future__ import annotations

from pathlib import Path
from typing import Final

import plotly
from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse

PAGES: Final = Path(__file__).resolve().parents[1] / "dashboard"
PLOTLY_JS: Final = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
FILES: Final = {"index.html": "index.html", "app.js": "app.js", "style.css": "style.css"}

router = APIRouter(include_in_schema=False)


@router.get("/dashboard")
async def dashboard_root() -> RedirectResponse:
    return RedirectResponse("/dashboard/")


@router.get("/dashboard/")
async def dashboard_index() -> FileResponse:
    return FileResponse(PAGES / "index.html", headers={"cache-control": "no-cache"})


@router.get("/dashboard/vendor/plotly.min.js")
async def plotly_js() -> FileResponse:
    return FileResponse(PLOTLY_JS, media_type="text/javascript")


@router.get("/dashboard/{name}")
async def dashboard_file(name: str) -> FileResponse:
    from tokenhub.api.web import ApiError

    if name not in FILES:
        raise ApiError(404, f"no dashboard file {name}")
    return FileResponse(PAGES / FILES[name], headers={"cache-control": "no-cache"})
