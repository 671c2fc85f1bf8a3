"""Session titles: after a session's first answer a background worker asks the model for a short title.

Nothing here can delay or fail an answer: ``submit`` only queues (dropping, with a log line, when the
queue is full), and every failure of the model or the store is logged while the fallback title (the
first user message cut to 60 characters) stays. Titles yield to answers: the worker waits for a quiet
moment without answers in flight (``Activity``), for at most ``max_defer`` seconds after submission, so
under load a title costs the answers nothing and is done once the load ends.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence

from .sessions import SessionStore
from .types import Message
from .wire import text_of

log = logging.getLogger("sorat.titles")

TITLE_SYSTEM_PROMPT = (
    "Generate a title for the conversation below: at most 8 words, in the conversation's language,"
    " without quotes, a prefix or final punctuation. Reply with the title and nothing else."
)
MAX_WORDS = 8
_CLIP = 2000  # characters of each message shown to the title model

_THINK = re.compile(r"<(think|thinking|reasoning)>.*?(?:</\1>|\Z)", re.S | re.I)
_UNOPENED_THINK = re.compile(r"\A.*?</(?:think|thinking|reasoning)>", re.S | re.I)
_PREFIX = re.compile(r"\A(?:(?:conversation|chat|session)\s+)?title\s*(?:[:：]|\s[-–—]\s)\s*", re.I)
_MARKUP = re.compile(r"\*+|__|`+|~~")
_LEAD = re.compile(r"\A(?:#+|[-*+>]|\d+[.)])\s+")
_QUOTES = "\"'“”‘’«»„‚‹›「」『』"
_TRAILING = ".,;:!?…。，；：！？ \t"


def title_messages(first_user: str, first_answer: str) -> list[Message]:
    conversation = f"User: {first_user[:_CLIP]}\n\nAssistant: {first_answer[:_CLIP]}"
    return [
        {"role": "system", "content": TITLE_SYSTEM_PROMPT},
        {"role": "user", "content": conversation},
    ]


def clean_title(raw: str | None) -> str | None:
    """The title in a model's reply: no reasoning, quotes, ``Title:`` prefix, markdown or final
    punctuation; at most 8 words. None if nothing is left."""
    if not raw:
        return None
    text = _UNOPENED_THINK.sub("", _THINK.sub("\n", raw))
    for line in text.splitlines():
        title = _clean_line(line)
        if title:
            return title
    return None


def _clean_line(line: str) -> str:
    previous = None
    while line != previous:
        previous = line
        line = _LEAD.sub("", _MARKUP.sub("", line).strip())
        line = line.strip().strip(_QUOTES + "*_ \t")
        line = _PREFIX.sub("", line).rstrip(_TRAILING)
    words = line.split()[:MAX_WORDS]
    return " ".join(words).rstrip(_TRAILING).strip(_QUOTES + " ")


def _first_exchange(messages: Sequence[Message]) -> tuple[str, str]:
    user = answer = ""
    for message in messages:
        text = text_of(message.get("content"))
        if not user:
            if message.get("role") == "user" and text.strip():
                user = text
        elif message.get("role") == "assistant" and text.strip():
            answer = text
            break
    return user, answer


class Activity:
    """The answers in flight, for background work that gives way to them."""

    __slots__ = ("busy", "since", "on_end")

    def __init__(self) -> None:
        self.busy = 0
        self.since = time.monotonic()  # when the last answer ended
        self.on_end: Callable[[], None] | None = None  # after each answer: work waiting for quiet

    def begin(self) -> None:
        self.busy += 1

    def end(self) -> None:
        self.busy -= 1
        self.since = time.monotonic()
        if self.on_end is not None:
            self.on_end()

    def quiet_for(self) -> float:
        """Seconds without an answer in flight (0 while one is)."""
        return 0.0 if self.busy else time.monotonic() - self.since


class TitleWorker:
    """Asks ``generate`` (the model, without tools) for titles, ``concurrency`` at a time, each after
    ``quiet`` seconds without answers in flight or ``max_defer`` seconds after it was submitted."""

    def __init__(
        self,
        store: SessionStore,
        generate: Callable[[list[Message]], Awaitable[str]],
        *,
        activity: Activity | None = None,
        concurrency: int = 2,
        max_queue: int = 10000,
        timeout: float = 300.0,
        quiet: float = 0.05,
        max_defer: float = 20.0,
    ) -> None:
        self._store = store
        self._generate = generate
        self._activity = activity or Activity()
        self._concurrency = concurrency
        self._timeout = timeout  # a hung model must not hold a worker forever
        self._quiet = quiet
        self._max_defer = max_defer
        self._queue: asyncio.Queue[tuple[str, str, str, float]] = asyncio.Queue(max_queue)
        self._pending: set[str] = set()  # sessions queued or being titled: one request each
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    def submit(self, session_id: str, messages: list[Message]) -> None:
        """Queues a title for the session from its first exchange in ``messages``. Never blocks or raises."""
        try:
            key = session_id.lower()
            if self._closed or key in self._pending:
                return
            user, answer = _first_exchange(messages)
            if not user:
                return
            self._queue.put_nowait((session_id, user, answer, time.monotonic()))
            self._pending.add(key)
        except asyncio.QueueFull:
            log.warning("title queue full: no generated title for session %s", session_id)
        except Exception:
            log.exception("could not queue a title for session %s", session_id)

    async def start(self) -> None:
        if not self._tasks and not self._closed:
            self._tasks = [
                asyncio.create_task(self._work(), name=f"sorat-titles-{i}") for i in range(self._concurrency)
            ]

    async def join(self) -> None:
        """Waits until every queued title is done (stored or given up)."""
        await self._queue.join()

    async def aclose(self) -> None:
        """Cancels pending work: sessions without a title keep their fallback."""
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        while not self._queue.empty():
            self._queue.get_nowait()
            self._queue.task_done()
        self._pending.clear()

    async def _work(self) -> None:
        while True:
            session_id, user, answer, submitted = await self._queue.get()
            try:
                await self._give_way(submitted)
                await self._title(session_id, user, answer)
            finally:
                self._pending.discard(session_id.lower())
                self._queue.task_done()

    async def _give_way(self, submitted: float) -> None:
        """Waits for a quiet moment without answers, or until the title has waited ``max_defer``."""
        while (wait := self._quiet - self._activity.quiet_for()) > 0:
            left = submitted + self._max_defer - time.monotonic()
            if left <= 0:
                return
            await asyncio.sleep(min(max(wait, 0.01), left))

    async def _title(self, session_id: str, user: str, answer: str) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                raw = await self._generate(title_messages(user, answer))
            title = clean_title(raw)
            if title is None:
                log.info("the model gave no usable title for session %s: %r", session_id, raw)
                return
            await self._store.set_title(session_id, title)
        except Exception as e:
            log.warning("title for session %s failed: %s", session_id, e or type(e).__name__)
