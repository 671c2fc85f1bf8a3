"""The OpenAI-compatible provider client on aiohttp, and the pool that picks a provider per request.

``Provider`` is a ``types.ModelClient``: ``complete`` and ``stream`` POST ``{base_url}/chat/completions``;
``list_models`` reads the configured list or ``GET {base_url}/models``. One pooled ``aiohttp.ClientSession``
(``Http``, made on first use) serves every provider; HTTP(S)_PROXY / NO_PROXY and SSL_CERT_FILE /
SSL_CERT_DIR (else certifi's bundle) apply as they did with httpx.

Failures, as the client sees them (the provider's own message is carried, its key never):

    connection error, 429, 5xx      retried (``attempts`` in all, exponential backoff with jitter,
                                    ``Retry-After`` honoured up to ``retry_after_cap``), only before
                                    the answer's body is read, so never after a Delta was yielded
    400 404 422 (other 4xx)         ProviderRejected (400), ContextWindowExceeded when the prompt is too long
    401 403                         ProviderError (502): the provider rejected the API key
    429 5xx after retries           ProviderError (502)
    cannot connect                  ProviderError (502) naming the provider and its URL;
                                    NoProvider (503) for a guessed local Ollama (``probe``)
    silent for read_timeout         ProviderTimeout (504); SSE comments are bytes, so they reset it
    200 with HTML or non-JSON       ProviderError (502)
    error inside a 200 stream       ProviderError (or ContextWindowExceeded), after the partial Deltas
    200 stream without any answer   ProviderError (LM Studio answers an over-long prompt this way)
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import functools
import logging
import os
import random
import ssl
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from typing import Any

import aiohttp
import certifi
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

from sorat_daemon import __version__, errors, wire
from sorat_daemon.config import ProviderSettings, Settings
from sorat_daemon.types import JSON, Delta, ModelCall, ModelResult, ToolCallDelta

log = logging.getLogger("sorat.providers")

AGENT_MODELS = ("sorat-agent", "default")
_NET_ERRORS: tuple[type[BaseException], ...] = (OSError, aiohttp.ClientError)


class Http:
    """The one pooled aiohttp session of every provider, made inside the running loop on first use."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=1000, keepalive_timeout=30),
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=True,
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


@functools.cache
def _tls() -> ssl.SSLContext:
    """Verification as httpx did it: SSL_CERT_FILE or SSL_CERT_DIR when set, else certifi's bundle. Made on
    the first https request (it costs ~25 ms), then shared."""
    if os.environ.get("SSL_CERT_FILE"):
        context = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    elif os.environ.get("SSL_CERT_DIR"):
        context = ssl.create_default_context(capath=os.environ["SSL_CERT_DIR"])
    else:
        context = ssl.create_default_context(cafile=certifi.where())
    context.set_alpn_protocols(["http/1.1"])
    return context


def _retry_after(headers: Mapping[str, str]) -> float | None:
    ms = headers.get("retry-after-ms")
    if ms:
        with contextlib.suppress(ValueError):
            return max(0.0, float(ms) / 1000)
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _extra(call: JSON) -> JSON | None:
    return {k: v for k, v in call.items() if k not in ("id", "type", "function")} or None


def _error_fields(raw: bytes) -> tuple[str, Any, Any, Any]:
    """message, type, code, param of an error body, whatever its shape (JSON or not)."""
    try:
        obj = wire.loads(raw)
    except ValueError:
        obj = None
    if isinstance(obj, dict | list) and obj:
        inner = obj.get("error") if isinstance(obj, dict) else None
        fields = inner if isinstance(inner, dict) else obj if isinstance(obj, dict) else {}
        return wire.error_text(obj), fields.get("type"), fields.get("code"), fields.get("param")
    text = raw.decode("utf-8", "replace")
    if "<html" in text[:500].lower() or "<!doctype" in text[:500].lower():
        return "an HTML page instead of an API answer", None, None, None
    return " ".join(text.split())[:300] or "no details", None, None, None


def _deltas(
    norm: wire.DeltaNormalizer, events: list[wire.Event]
) -> tuple[list[Delta], errors.ProviderError | None]:
    """The coalesced deltas of one read, and the error that ended it: what came before an error still
    reaches the client."""
    out: list[Delta | None] = []
    try:
        for ev in events:
            out.append(norm.event(ev))
    except errors.ProviderError as e:
        return wire.coalesce(out), e
    return wire.coalesce(out), None


class Provider:
    """One OpenAI-compatible endpoint (``types.ModelClient``)."""

    def __init__(
        self,
        settings: ProviderSettings,
        http: Http,
        *,
        read_timeout: float = 120.0,
        connect_timeout: float = 10.0,
        attempts: int = 3,
        backoff_base: float = 0.5,
        backoff_cap: float = 8.0,
        retry_after_cap: float = 30.0,
        finish_grace: float = 5.0,
        no_provider_message: str = "No provider is configured",
    ) -> None:
        self.settings = settings
        self.name = settings.name
        self.base_url = settings.base_url.rstrip("/")
        self.probe = settings.probe
        self._http = http
        self._url = self.base_url + "/chat/completions"
        self._headers = {
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
            "User-Agent": f"sorat/{__version__}",
        }
        if settings.api_key:
            self._headers["Authorization"] = f"Bearer {settings.api_key}"
        self._read_timeout = read_timeout
        # connect bounds DNS, TCP and TLS together, as httpx's did (sock_connect would leave DNS out);
        # sock_read is the silence between two reads, so an SSE comment resets it too
        self._timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout, sock_read=read_timeout)
        self._attempts = 1 if settings.probe else max(1, attempts)
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._retry_after_cap = retry_after_cap
        self._finish_grace = finish_grace
        self._no_provider = no_provider_message
        self._stream_options = True  # dropped for good if the provider refuses it
        self._label = f"The provider {self.name!r}"

    def __repr__(self) -> str:
        return f"Provider({self.name!r}, {self.base_url!r})"

    # --- the ModelClient calls ---

    async def complete(self, call: ModelCall) -> ModelResult:
        response = await self._post(call, stream=False)
        try:
            return await self._whole(response)
        finally:
            response.release()

    async def stream(self, call: ModelCall) -> AsyncGenerator[Delta, None]:
        response = await self._post(call, stream=True)
        try:
            async for delta in self._relay(response):
                yield delta
        finally:
            # before the whole body came, releasing drops the connection: that cancels the upstream request;
            # after it, the connection goes back to the pool
            response.release()

    async def list_models(self) -> list[str]:
        if self.settings.models:
            return list(self.settings.models)
        headers = {k: v for k, v in self._headers.items() if k != "Content-Type"}
        try:
            async with self._http.session().get(
                self.base_url + "/models",
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
                **self._route,
            ) as response:
                raw = await response.read()
        except aiohttp.SocketTimeoutError:
            raise self._timeout_error() from None
        except _NET_ERRORS as e:
            raise self._connect_error(e) from None
        if not 200 <= response.status < 300:
            raise self._status_error(response.status, raw)
        try:
            data = wire.loads(raw).get("data")
            return [m["id"] for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]
        except (ValueError, AttributeError, TypeError):
            raise self._not_json(response, raw) from None

    # --- one request, with retries ---

    def _body(self, call: ModelCall, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = dict(call.params)
        body["model"] = call.model
        body["messages"] = call.messages
        if call.tools:
            body["tools"] = call.tools
            if call.tool_choice is not None:
                body["tool_choice"] = call.tool_choice
        else:  # OpenAI refuses both without tools
            body.pop("tool_choice", None)
            body.pop("parallel_tool_calls", None)
        body.pop("n", None)
        if stream:
            body["stream"] = True
            if self._stream_options:
                body["stream_options"] = {"include_usage": True}
        else:
            body.pop("stream", None)
            body.pop("stream_options", None)
        return body

    @functools.cached_property
    def _route(self) -> dict[str, Any]:
        """The TLS context (https only) and the environment's proxy (HTTP(S)_PROXY, NO_PROXY) of each
        request, looked up on the first. The session does not ``trust_env``: aiohttp would then look both
        up in threads on every request, and a ~/.netrc entry for the host would clash with the API key."""
        url = URL(self.base_url)
        route: dict[str, Any] = {"ssl": _tls()} if url.scheme == "https" else {}
        with contextlib.suppress(LookupError):
            route["proxy"], route["proxy_auth"] = get_env_proxy_for_url(url)
        return route

    async def _post(self, call: ModelCall, stream: bool) -> aiohttp.ClientResponse:
        """POST until a 2xx response (open, its body unread) or a mapped error."""
        body = self._body(call, stream)
        session = self._http.session()
        attempt = 0
        while True:
            wait: float | None = None
            try:
                response = await session.post(
                    self._url,
                    data=wire.dumps(body),
                    headers=self._headers,
                    timeout=self._timeout,
                    allow_redirects=False,
                    **self._route,
                )
            except aiohttp.SocketTimeoutError:  # read silence; a ConnectionTimeoutError cannot connect
                raise self._timeout_error() from None
            except _NET_ERRORS as e:
                failure: errors.SoratError = self._connect_error(e)
            else:
                if 200 <= response.status < 300:
                    return response
                try:
                    raw = await response.read()
                except _NET_ERRORS:
                    raw = b""
                finally:
                    response.release()
                status = response.status
                if stream and self._stream_options and status in (400, 422) and b"stream_options" in raw:
                    log.info("%s: refuses stream_options; streaming without usage", self.name)
                    self._stream_options = False
                    body.pop("stream_options", None)
                    continue
                failure = self._status_error(status, raw)
                if status not in (408, 429) and status < 500:
                    raise failure
                wait = _retry_after(response.headers)
            attempt += 1
            if attempt >= self._attempts:
                raise failure
            if wait is None:
                backoff = min(self._backoff_cap, self._backoff_base * 2 ** (attempt - 1))
                wait = backoff / 2 + random.uniform(0, backoff / 2)
            else:
                wait = min(wait, self._retry_after_cap)
            log.warning("%s: %s; retry %d in %.2f s", self.name, failure.message, attempt, wait)
            await asyncio.sleep(wait)

    # --- reading a stream ---

    async def _relay(self, response: aiohttp.ClientResponse) -> AsyncIterator[Delta]:
        self._check_not_html(response)
        kind = response.headers.get("content-type", "")
        if "application/json" in kind:  # the provider ignored stream=true and answered whole
            result = await self._whole(response)
            msg = result.message
            calls = msg.get("tool_calls") or []
            deltas = [
                ToolCallDelta(i, c["id"], c["function"]["name"], c["function"]["arguments"], _extra(c))
                for i, c in enumerate(calls)
            ]
            if msg.get("content") or msg.get("reasoning_content") or deltas:
                yield Delta(msg.get("content") or None, msg.get("reasoning_content"), deltas or None)
            yield Delta(finish_reason=result.finish_reason, usage=result.usage)
            return
        decoder = wire.SSEDecoder()
        norm = wire.DeltaNormalizer(self._label)
        chunks = response.content.iter_any()  # whatever one read brought
        try:
            while not norm.done:
                try:
                    if norm.finish is None:
                        data = await anext(chunks)
                    else:  # answered: a server that keeps the stream open (vllm-mlx) gets a short grace
                        async with asyncio.timeout(self._finish_grace):
                            data = await anext(chunks)
                except StopAsyncIteration:
                    last, failure = _deltas(norm, decoder.close())
                    for d in last:
                        yield d
                    if failure:
                        raise failure from None
                    break
                # what arrived in one read goes on as few deltas: the client gets every token as soon
                # as it exists, without a frame, a write and a wake-up per upstream chunk
                batch, failure = _deltas(norm, decoder.feed(data))
                for d in batch:
                    yield d
                if failure:
                    raise failure from None
        except TimeoutError:  # the read silence (aiohttp.SocketTimeoutError), or the grace after the finish
            if norm.finish is None:
                raise self._timeout_error() from None
        except _NET_ERRORS as e:
            if norm.finish is None:
                raise self._scrub(
                    errors.ProviderError(f"{self._label} broke off the answer: {e!r}")
                ) from None
        except errors.ProviderError as e:
            raise self._scrub(e) from None
        if not norm.produced and norm.finish is None:
            junk = f" It sent: {norm.junk.decode('utf-8', 'replace')!r}" if norm.junk else ""
            raise errors.ProviderError(
                f"{self._label} ended the stream without any answer (LM Studio does this when the prompt "
                f"exceeds the model's context size).{junk}"
            )
        yield norm.final()

    async def _whole(self, response: aiohttp.ClientResponse) -> ModelResult:
        try:
            raw = await response.read()
        except aiohttp.SocketTimeoutError:
            raise self._timeout_error() from None
        except _NET_ERRORS as e:
            raise self._scrub(errors.ProviderError(f"{self._label} broke the connection: {e!r}")) from None
        self._check_not_html(response)
        try:
            obj = wire.loads(raw)
        except ValueError:
            raise self._not_json(response, raw) from None
        try:
            return wire.parse_completion(obj, self._label)
        except errors.ProviderError as e:
            raise self._scrub(e) from None

    # --- errors ---

    def _scrub(self, e: errors.ProviderError) -> errors.ProviderError:
        key = self.settings.api_key
        if key and len(key) >= 8 and key in e.message:  # a short test key would mangle words
            e.message = e.message.replace(key, "***")
            e.args = (e.message,)
        return e

    def _timeout_error(self) -> errors.ProviderTimeout:
        return errors.ProviderTimeout(
            f"{self._label} sent nothing for {self._read_timeout:g} s; gave up "
            "([agent] provider_read_timeout_s in config.toml)"
        )

    def _connect_error(self, e: BaseException) -> errors.SoratError:
        if self.probe:
            return errors.NoProvider(self._no_provider)
        detail = str(e) or type(e).__name__
        return errors.ProviderError(
            f"Cannot connect to the provider {self.name!r} at {self.base_url}: {detail}"
        )

    def _status_error(self, status: int, raw: bytes) -> errors.ProviderError:
        message, kind, code, param = _error_fields(raw)
        if status in (401, 403):
            if not self.settings.api_key:
                hint = "it needs an API key: set api_key or api_key_env for it in config.toml"
            else:
                hint = "check api_key / api_key_env in config.toml"
            e = errors.ProviderError(
                f"The provider {self.name!r} rejected the API key (HTTP {status}): {message}; {hint}"
            )
        elif status in (408, 429) or status >= 500:
            e = errors.ProviderError(f"The provider {self.name!r} failed (HTTP {status}): {message}")
        elif wire.is_context_window(message, kind, code):
            e = errors.ContextWindowExceeded(message, code="context_length_exceeded")
        else:
            if status == 404 and message == "an HTML page instead of an API answer":
                message = f"{self._url} was not found: is {self.base_url} an OpenAI-compatible API?"
            e = errors.ProviderRejected(
                message,
                param=param if isinstance(param, str) else None,
                code=code if isinstance(code, str) else None,
            )
        return self._scrub(e)

    def _check_not_html(self, response: aiohttp.ClientResponse) -> None:
        if "text/html" in response.headers.get("content-type", ""):
            raise errors.ProviderError(
                f"{self._label} answered with an HTML page, not the API: is {self.base_url} its base_url?"
            )

    def _not_json(self, response: aiohttp.ClientResponse, raw: bytes) -> errors.ProviderError:
        snippet = " ".join(raw[:200].decode("utf-8", "replace").split())
        kind = response.headers.get("content-type", "no content type")
        return self._scrub(
            errors.ProviderError(
                f"{self._label} answered with something that is not JSON ({kind}): {snippet!r}"
            )
        )


class ReportingProvider(Provider):
    """A Provider that tells its pool how each call went (the tray shows the last failure)."""

    def __init__(
        self, *args: Any, report: Callable[[Provider, errors.SoratError | None], None], **kw: Any
    ) -> None:
        super().__init__(*args, **kw)
        self._report = report

    async def complete(self, call: ModelCall) -> ModelResult:
        try:
            result = await super().complete(call)
        except errors.ProviderRejected:
            raise
        except (errors.ProviderError, errors.NoProvider) as e:
            self._report(self, e)
            raise
        self._report(self, None)
        return result

    async def stream(self, call: ModelCall) -> AsyncGenerator[Delta, None]:
        inner = super().stream(call)
        try:
            async for delta in inner:
                yield delta
        except errors.ProviderRejected:
            raise
        except (errors.ProviderError, errors.NoProvider) as e:
            self._report(self, e)
            raise
        finally:
            await inner.aclose()
        self._report(self, None)


class ProviderPool:
    """Every configured provider, their models (configured at once, discovered in the background), and
    the choice of provider and model for each request."""

    def __init__(
        self,
        settings: Settings,
        *,
        on_status: Callable[[str | None], None] | None = None,
        attempts: int = 3,
        backoff_base: float = 0.5,
        backoff_cap: float = 8.0,
        retry_after_cap: float = 30.0,
        connect_timeout: float = 10.0,
        finish_grace: float = 5.0,
    ) -> None:
        self.settings = settings
        self._on_status = on_status
        self._http = Http()
        where = str(settings.file) if settings.file else "config.toml"
        self._no_provider_message = (
            f"No LLM provider is configured. Add a [[providers]] block (name, base_url, api_key) to {where}, "
            "or set OPENAI_API_KEY (and OPENAI_BASE_URL for another OpenAI-compatible API); a local Ollama "
            "at http://127.0.0.1:11434/v1 is used when it runs."
        )
        self.providers = [
            ReportingProvider(
                p,
                self._http,
                report=self._reported,
                read_timeout=settings.agent.provider_read_timeout_s,
                connect_timeout=min(connect_timeout, 2.0) if p.probe else connect_timeout,
                attempts=attempts,
                backoff_base=backoff_base,
                backoff_cap=backoff_cap,
                retry_after_cap=retry_after_cap,
                finish_grace=finish_grace,
                no_provider_message=self._no_provider_message,
            )
            for p in settings.providers
        ]
        self._models: dict[str, list[str]] = {p.name: list(p.settings.models) for p in self.providers}
        self._down: dict[str, float] = {}  # probe providers found not answering → when (monotonic)
        self._discovered_at: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start discovering models (and probing a guessed Ollama) in the background; returns at once."""
        self._spawn_discovery()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._http.aclose()

    async def ready(self) -> None:
        """Wait for the discovery in progress, if any (tests, `sorat model`)."""
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._task)

    async def refresh_models(self) -> None:
        await asyncio.gather(*(self._discover(p) for p in self.providers))

    def models(self) -> list[tuple[str, str]]:
        """(model id, provider name) known so far, each model once (the first provider offering it)."""
        seen: dict[str, str] = {}
        for p in self.providers:
            if p.name in self._down:
                continue
            for m in self._models.get(p.name, ()):
                seen.setdefault(m, p.name)
        return list(seen.items())

    def default_owner(self) -> str:
        """The provider that serves the active model when no list names it."""
        usable = self._usable()
        return usable[0].name if usable else "sorat"

    def no_provider(self) -> str | None:
        """Why no provider can be used, or None."""
        return None if self._usable() else self._no_provider_message

    def resolve(self, requested: str | None, active: str) -> tuple[Provider, str]:
        """The provider and model for a request: a model some provider offers is used as asked; anything
        else ("sorat-agent", "default", None, an unknown name) means the active model."""
        usable = self._usable()
        if not usable:
            self._spawn_discovery(stale_after=1.0)  # a local Ollama started since may answer next time
            raise errors.NoProvider(self._no_provider_message)
        model = active
        if requested and requested not in AGENT_MODELS:
            for p in usable:
                if requested in self._models.get(p.name, ()):
                    return p, requested
        for p in usable:
            if model in self._models.get(p.name, ()):
                return p, model
        return usable[0], model

    # --- internals ---

    def _usable(self) -> list[Provider]:
        return [p for p in self.providers if p.name not in self._down]

    def _spawn_discovery(self, stale_after: float | None = None) -> None:
        if self._task is not None and not self._task.done():
            return
        if stale_after is not None:
            now = time.monotonic()
            if all(now - self._discovered_at.get(p.name, 0.0) < stale_after for p in self.providers):
                return
        with contextlib.suppress(RuntimeError):  # no running loop: nothing to do in the background
            self._task = asyncio.get_running_loop().create_task(self.refresh_models())

    async def _discover(self, p: Provider) -> None:
        try:
            models = await p.list_models()
        except (errors.ProviderError, errors.NoProvider) as e:
            self._discovered_at[p.name] = time.monotonic()
            if p.probe:
                log.info("no local Ollama at %s", p.base_url)
                self._mark_down(p)
            else:
                log.warning("%s: cannot list models: %s", p.name, e.message)
            return
        except Exception:  # a bug must not kill discovery of the other providers
            log.exception("%s: model discovery failed", p.name)
            return
        self._discovered_at[p.name] = time.monotonic()
        if models or not self._models.get(p.name):
            self._models[p.name] = models
        if p.probe:
            log.info("using the local Ollama at %s (%d models)", p.base_url, len(models))
            self._mark_up(p)

    def _mark_down(self, p: Provider) -> None:
        self._down[p.name] = time.monotonic()
        if self._on_status is not None and not self._usable():
            self._on_status(self._no_provider_message)

    def _mark_up(self, p: Provider) -> None:
        was_down = self._down.pop(p.name, None) is not None
        if was_down and self._on_status is not None:
            self._on_status(None)

    def _reported(self, p: Provider, failure: errors.SoratError | None) -> None:
        if failure is None:
            if p.probe and p.name in self._down:
                self._mark_up(p)
                self._spawn_discovery()
            if self._on_status is not None:
                self._on_status(None)
            return
        if isinstance(failure, errors.NoProvider):
            self._mark_down(p)
            return
        if self._on_status is not None:
            self._on_status(failure.message)
