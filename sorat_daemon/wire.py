"""What both sides of sorat share: JSON encoding, message text, random ids, usage sums. Pure: no I/O.

The bottom of the import graph (it imports only ``errors`` and ``types``): the client protocols
(``protocols/``) and the provider client (``providers/``) both stand on it, and on nothing of each other.
"""

from __future__ import annotations

import random
from typing import Any

import orjson

from sorat_daemon.errors import RequestError
from sorat_daemon.types import JSON


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def json_object(body: bytes | str) -> JSON:
    """A request body that must be a JSON object: every protocol's first check (400 otherwise)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise not_json(e) from None
    return must_be_object(data)


def not_json(e: orjson.JSONDecodeError) -> RequestError:
    return RequestError(f"The request body is not valid JSON: {e}")


def must_be_object(data: Any) -> JSON:
    if not isinstance(data, dict):
        raise RequestError("The request body must be a JSON object")
    return data


def loads(data: bytes | str) -> Any:
    return orjson.loads(data)


def text_of(content: Any) -> str:
    """The text of a message's ``content``: a string, or the text parts of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text") or "") for p in content if isinstance(p, dict))
    return ""


_ids = random.Random()  # seeded from os.urandom; response and call ids are labels, not secrets


def random_id(prefix: str) -> str:
    """``prefix`` and 24 random hex digits: a response, item or call id in any protocol's style."""
    return f"{prefix}{_ids.getrandbits(96):024x}"


def new_call_id() -> str:
    return f"call_{_ids.getrandbits(96):024x}"


def add_usage(a: JSON | None, b: JSON | None) -> JSON:
    """The sum of two usages (either may be None); never None, so a usage chunk always has numbers."""
    out: JSON = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    for u in (a, b):
        if u:
            _add_into(out, u)
    return out


def _add_into(out: JSON, u: JSON) -> None:
    for key, value in u.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            prev = out.get(key, 0)
            out[key] = (prev if isinstance(prev, int | float) else 0) + value
        elif isinstance(value, dict):
            sub = out.get(key)
            if not isinstance(sub, dict):
                sub = out[key] = {}
            _add_into(sub, value)
