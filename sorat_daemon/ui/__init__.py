"""The web UI: server-rendered pages at ``/`` and ``/ui/…``, signed in without the bearer token.

``entry`` is all the daemon loads at start (the route table and the one-time-link API route); the
pages, templates, markdown renderer and checks load on the first UI request.
"""
