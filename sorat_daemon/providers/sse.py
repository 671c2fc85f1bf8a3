"""Server-sent events from a provider: ``SSEDecoder`` splits a byte stream into ``Event``s whatever the
framing (any line ending, split anywhere across reads, comments, ``event:`` names, llama.cpp's ``error:``
field). Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Event:
    data: bytes = b""  # the data lines, joined with \n
    event: str | None = None  # the event: name (an ``error:`` line gives "error")
    comment: bool = False  # comments only: a liveness signal, never JSON


class SSEDecoder:
    """Incremental SSE parser: any line ending (CR, LF, CRLF, split across reads), ``data:`` with or
    without its space, comments, ``event:`` names; ``close()`` flushes a last event that lacks its blank line.
    """

    __slots__ = ("_buf", "_cr")

    def __init__(self) -> None:
        self._buf = b""
        self._cr = False  # the last read ended in \r: a \n starting the next one belongs to it

    def feed(self, data: bytes) -> list[Event]:
        if not data:
            return []
        if self._cr:
            self._cr = False
            if data[:1] == b"\n":
                data = data[1:]
        if b"\r" in data:
            self._cr = data[-1:] == b"\r"
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buf = self._buf
        if buf:
            # only the new bytes can complete an event: keeps a huge event in small reads linear
            if b"\n\n" not in data and not (buf[-1:] == b"\n" and data[:1] == b"\n"):
                self._buf = buf + data
                return []
            data = buf + data
        elif b"\n\n" not in data:
            self._buf = data
            return []
        parts = data.split(b"\n\n")
        self._buf = parts.pop()
        out = []
        for p in parts:
            if p[:6] == b"data: " and b"\n" not in p:
                out.append(Event(p[6:]))
            elif p:
                ev = _block(p)
                if ev is not None:
                    out.append(ev)
        return out

    def close(self) -> list[Event]:
        buf, self._buf = self._buf, b""
        ev = _block(buf) if buf else None
        return [ev] if ev is not None else []


def _block(block: bytes) -> Event | None:
    data: list[bytes] = []
    event: str | None = None
    comment = False
    for line in block.split(b"\n"):
        if not line:
            continue
        if line[:1] == b":":
            comment = True
            continue
        name, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            data.append(value)
        elif name == b"event":
            event = value.decode("utf-8", "replace")
        elif name == b"error":  # llama.cpp's old servers wrote their errors in this non-standard field
            data.append(value)
            event = event or "error"
    if data and (len(data) > 1 or data[0]):
        return Event(b"\n".join(data), event)
    return Event(comment=True) if comment else None
