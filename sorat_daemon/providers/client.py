"""The OpenAI-compatible provider client on aiohttp: ``Provider``, a ``types.ModelClient``.

``complete`` and ``stream`` POST ``{base_url}/chat/completions``; ``list_models`` reads the configured list
or ``GET {base_url}/models``. The session, TLS and proxies are ``transport``'s; what the provider's JSON
means is ``normalize``'s and ``completion``'s; this module does the requests, the retries and the relay.

Failures, as the client sees them (the provider's own message is carried, its key never):

    connection error, 408, 429, 5xx retried (``attempts`` in all, exponential backoff with jitter,
                                    ``Retry-After`` honoured up to ``retry_after_cap``), only before
                                    the answer's body is read, so never after a Delta was yielded
    400 404 422 (other 4xx)         ProviderRejected (400), ContextWindowExceeded when the prompt is too long
    401 403                         ProviderError (502): the provider rejected the API key
    429 after retries               RateLimited (429), its ``retry_after`` the provider's last Retry-After
    408 5xx after retries           ProviderError (502)
    cannot connect                  ProviderError (502) naming the provider and its URL;
                                    NoProvider (503) for a guessed local Ollama (``probe``)
    silent for read_timeout         ProviderTimeout (504); SSE comments are bytes, so they reset it
    200 with HTML or non-JSON       ProviderError (502)
    error inside a 200 stream       ProviderError (or ContextWindowExceeded), after the partial Deltas
    200 stream without any answer   ProviderError (LM Studio answers an over-long prompt this way)
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import aiohttp

from sorat_daemon import __version__, errors, wire
from sorat_daemon.config import ProviderSettings
from sorat_daemon.providers.completion import coalesce, parse_completion
from sorat_daemon.providers.normalize import DeltaNormalizer, error_fields, is_context_window
from sorat_daemon.providers.sse import Event, SSEDecoder
from sorat_daemon.providers.transport import Http, retry_after, route
from sorat_daemon.types import JSON, Delta, ModelCall, ModelResult, ToolCallDelta

log = logging.getLogger("sorat.providers")

_NET_ERRORS: tuple[type[BaseException], ...] = (OSError, aiohttp.ClientError)


def _extra(call: JSON) -> JSON | None:
    return {k: v for k, v in call.items() if k not in ("id", "type", "function")} or None


def _deltas(norm: DeltaNormalizer, events: list[Event]) -> tuple[list[Delta], errors.ProviderError | None]:
    """The coalesced deltas of one read, and the error that ended it: what came before an error still
    reaches the client."""
    out: list[Delta | None] = []
    try:
        for ev in events:
            out.append(norm.event(ev))
    except errors.ProviderError as e:
        return coalesce(out), e
    return coalesce(out), None


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
            raise self._status_error(response.status, raw, retry_after(response.headers))
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
        """``transport.route`` of each request, looked up on the first."""
        return route(self.base_url)

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
                retryable = status in (408, 429) or status >= 500
                wait = retry_after(response.headers) if retryable else None
                failure = self._status_error(status, raw, wait)
                if not retryable:
                    raise failure
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
                content, reasoning = msg.get("content") or None, msg.get("reasoning_content")
                yield Delta(content, reasoning, deltas or None, logprobs=result.logprobs)
            yield Delta(finish_reason=result.finish_reason, usage=result.usage)
            return
        decoder = SSEDecoder()
        norm = DeltaNormalizer(self._label)
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
            return parse_completion(obj, self._label)
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

    def _status_error(self, status: int, raw: bytes, wait: float | None = None) -> errors.ProviderError:
        """The error for a provider's non-2xx answer; ``wait`` is its Retry-After, for a 429."""
        message, kind, code, param = error_fields(raw)
        if status in (401, 403):
            if not self.settings.api_key:
                hint = "it needs an API key: set api_key or api_key_env for it in config.toml"
            else:
                hint = "check api_key / api_key_env in config.toml"
            e = errors.ProviderError(
                f"The provider {self.name!r} rejected the API key (HTTP {status}): {message}; {hint}"
            )
        elif status == 429:
            e = errors.RateLimited(
                f"The provider {self.name!r} rate-limited the request (HTTP 429): {message}", retry_after=wait
            )
        elif status == 408 or status >= 500:
            e = errors.ProviderError(f"The provider {self.name!r} failed (HTTP {status}): {message}")
        elif is_context_window(message, kind, code):
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
