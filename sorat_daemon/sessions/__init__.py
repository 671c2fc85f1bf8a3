"""The session store: every conversation, kept on disk under ``$SORAT_HOME/sessions/``.

``format.py`` (the files and their records: the format is documented there), ``files.py`` (crash-safe
file I/O), ``index.py`` (the SQLite index), ``history.py`` (comparing a request with the stored
conversation, and planning it), ``session.py`` (one session in memory), ``store.py`` (``SessionStore``);
``responses.py`` (``ResponseStore``: what the Responses API's ``resp_…`` ids stand for).
"""

from __future__ import annotations

from .format import valid_session_id
from .store import SessionStore, Turn

__all__ = ["SessionStore", "Turn", "valid_session_id"]
