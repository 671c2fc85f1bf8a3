"""sorat: a local agent daemon that speaks OpenAI's Chat Completions API."""

import sys

__version__ = "0.1.0"

# httpx imports its command-line client (click and rich: ~80 ms) whenever those are installed; a daemon
# that starts at login never uses it. Without the module, httpx falls back to a stub.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
