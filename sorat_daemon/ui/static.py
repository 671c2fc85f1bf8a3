"""The UI's own scripts and styles, served from the package (no CDN, nothing fetched at run time)."""

from __future__ import annotations

from quart import Response, request

from sorat_daemon.errors import NotFound
from sorat_daemon.ui.site import STATIC, Site

TYPES = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}


async def asset(site: Site, name: str) -> Response:
    kind = TYPES.get(name[name.rfind(".") :]) if "." in name else None
    file = STATIC / name
    if kind is None or name.startswith(".") or not file.is_file():
        raise NotFound(f"No asset {name!r}")
    resp = Response(file.read_bytes(), content_type=kind)
    fresh = request.args.get("h") == site.static_url(name).rsplit("=", 1)[1]
    resp.headers["Cache-Control"] = "public, max-age=31536000, immutable" if fresh else "no-cache"
    return resp
