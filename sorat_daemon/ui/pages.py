"""The pages that show and manage sessions, and the model switch.

Every handler takes the ``Site`` and the URL's values. Reading pages are GETs; changes are form POSTs
answered with a redirect (so a reload repeats nothing), checked by ``ui.security`` before they get here.
"""

from __future__ import annotations

import re
from typing import Any

from quart import Response, request

from sorat_daemon import wire
from sorat_daemon.errors import NotFound, RequestError
from sorat_daemon.sessions import valid_session_id
from sorat_daemon.ui import view
from sorat_daemon.ui.site import Site, see_other

PAGE = 50
MAX_QUERY = 200


async def _form() -> dict[str, str]:
    form = await request.form
    return {k: form.get(k, "") for k in form}


async def sessions(site: Site) -> Response:
    store = site.rt.store
    query = " ".join(request.args.get("q", "").split())[:MAX_QUERY]
    after = request.args.get("after") or None
    if after is not None and not valid_session_id(after):
        raise RequestError("after must name a session", param="after")
    rows, more = await (store.search(query, PAGE, after) if query else store.list(PAGE, after))
    return site.page(
        "sessions.html",
        nav="sessions",
        rows=rows,
        query=query,
        more=rows[-1]["id"] if more and rows else None,
    )


async def _session_or_404(site: Site, session_id: str) -> dict[str, Any]:
    found = await site.rt.store.get(session_id, include_superseded=True)
    if found is None:
        raise NotFound(f"No session {session_id!r}")
    return found


async def session(site: Site, session_id: str) -> Response:
    found = await _session_or_404(site, session_id)
    show_superseded = request.args.get("versions") == "all"
    messages = found["messages"]
    return site.page(
        "session.html",
        nav="sessions",
        session=found,
        entries=view.conversation(messages, superseded=show_superseded),
        superseded=view.superseded_count(messages),
        show_superseded=show_superseded,
    )


def _download(body: bytes | str, content_type: str, name: str) -> Response:
    resp = Response(body, content_type=content_type)
    resp.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    return resp


def _file_stem(session_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", session_id)  # ids already are; never trust a header


async def export_markdown(site: Site, session_id: str) -> Response:
    found = await _session_or_404(site, session_id)
    text = view.markdown_export(found)
    return _download(text, "text/markdown; charset=utf-8", f"{_file_stem(found['id'])}.md")


async def export_json(site: Site, session_id: str) -> Response:
    found = await _session_or_404(site, session_id)
    return _download(wire.dumps(found), "application/json", f"{_file_stem(found['id'])}.json")


async def delete(site: Site, session_id: str) -> Response:
    if request.method == "GET":
        found = await _session_or_404(site, session_id)
        return site.page("delete.html", nav="sessions", session=found)
    if not await site.rt.store.delete(session_id):
        raise NotFound(f"No session {session_id!r}")
    return see_other("/ui/sessions")


async def model(site: Site) -> Response:
    rt = site.rt
    offered = [name for name, _ in rt.pool.models()]
    problem = None
    if request.method == "POST":
        name = (await _form()).get("model", "").strip()
        if name in offered:
            rt.switch_model(name)
            return see_other("/ui/model?switched=1")
        problem = f"No provider offers {name!r}"
    return site.page(
        "model.html",
        status=400 if problem else 200,
        nav="model",
        models=offered,
        active=rt.active_model,
        problem=problem,
        switched=request.args.get("switched") == "1",
        no_provider=rt.pool.no_provider(),
    )
