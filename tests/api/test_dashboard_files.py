"""The dashboard's files are served by the API itself, plotly.js from the
installed package: nothing is fetched from another host."""

from __future__ import annotations

import re

import httpx

from tokenhub.api.app import create_app
from tokenhub.api.settings import ApiSettings
from tokenhub.infra.settings import Settings


async def test_pages_and_charting_library_come_from_the_api_alone() -> None:
    app = create_app(Settings(bootstrap_servers="127.0.0.1:1", database_url="postgresql://nobody@/none"), ApiSettings())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
        index = await client.get("/dashboard/")
        assert index.status_code == 200 and "text/html" in index.headers["content-type"]
        assets = [asset for asset in re.findall(r'(?:src|href)="([^"]+)"', index.text) if not asset.startswith("#")]
        assert sorted(assets) == ["app.js", "data:,", "style.css", "vendor/plotly.min.js"]
        for asset in ("app.js", "style.css", "vendor/plotly.min.js"):
            response = await client.get(f"/dashboard/{asset}")
            assert response.status_code == 200 and len(response.content) > 1000, asset
        script = (await client.get("/dashboard/app.js")).text
        assert not re.search(r"https?://", script + index.text)  # every request goes to the API that served the page
        assert (await client.get("/dashboard/other.js")).status_code == 404
        assert (await client.get("/dashboard", follow_redirects=False)).headers["location"] == "/dashboard/"
