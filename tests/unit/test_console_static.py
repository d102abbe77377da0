"""The console's static routes: served without a session (they hold no data), nothing outside
static/, right types, and revalidation by ETag."""

from __future__ import annotations

from aiohttp.test_utils import TestClient, TestServer

from shoal.api import create_app
from shoal.api.auth import Security
from shoal.api.testing import FakeManager
from shoal.console import static_routes


def _client() -> TestClient:
    # anonymous=None: a caller with no credentials is refused everywhere but the open routes
    return TestClient(TestServer(static_routes.install(create_app(FakeManager(), Security(anonymous=None)))))


async def test_cu_page_and_files_are_served_without_a_session_and_data_is_not() -> None:
    async with _client() as c:
        page = await c.get("/console/")
        assert page.status == 200 and page.content_type == "text/html"
        assert "app.js" in await page.text()
        assert "default-src 'self'" in page.headers["Content-Security-Policy"]
        js = await c.get("/console/static/app.js")
        assert js.status == 200 and js.content_type == "text/javascript"
        css = await c.get("/console/static/style.css")
        assert css.status == 200 and css.content_type == "text/css"
        bare = await c.get("/console", allow_redirects=False)
        assert bare.status == 302 and bare.headers["Location"] == "/console/"
        assert (await c.get("/services")).status == 401  # the data stays behind authentication


async def test_cu_paths_outside_static_are_404() -> None:
    async with _client() as c:
        for path in ("/console/static/../static_routes.py", "/console/static/%2e%2e/static_routes.py",
                     "/console/static/views/../../__init__.py", "/console/static/.hidden", "/console/static/nope.js",
                     "/console/static/%2fetc%2fpasswd", "/console/static/views/"):
            resp = await c.get(path)
            # 404 from the static route, or 401: a path whose dot segments were resolved by the URL
            # parser is outside /console/static/ and an API route like any other
            assert resp.status in (404, 401), path
            assert "message" in await resp.json()


async def test_cu_etag_revalidation_answers_304() -> None:
    async with _client() as c:
        first = await c.get("/console/static/app.js")
        etag = first.headers["ETag"]
        assert first.headers["Cache-Control"] == "no-cache"
        again = await c.get("/console/static/app.js", headers={"If-None-Match": etag})
        assert again.status == 304 and again.headers["ETag"] == etag
        other = await c.get("/console/static/app.js", headers={"If-None-Match": '"stale"'})
        assert other.status == 200 and len(await other.read()) > 100
