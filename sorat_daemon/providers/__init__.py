"""The model side: the OpenAI-compatible client and the pool that picks a provider per request.

    transport     the pooled aiohttp session, TLS, proxies, Retry-After
    client        ``Provider``: request bodies, POST with retries, the stream relay, error mapping
    pool          ``ProviderPool``: resolve a request's provider and model, discovery, status
    sse           ``SSEDecoder``: a provider's byte stream → events, whatever the framing
    normalize     ``DeltaNormalizer``: each provider's chunk dialect → ``types.Delta``; its errors
    completion    ``parse_completion``, ``coalesce``, ``ToolCallAccumulator``

Only ``transport``, ``client`` and ``pool`` do I/O; the rest is pure translation.
"""

from sorat_daemon.providers.client import Provider
from sorat_daemon.providers.pool import AGENT_MODELS, ProviderPool, ReportingProvider
from sorat_daemon.providers.transport import Http

__all__ = ["AGENT_MODELS", "Http", "Provider", "ProviderPool", "ReportingProvider"]
