"""The one exception tree. Every error a client can see is a ``SoratError``;
``server.py`` turns it into OpenAI's error JSON in one place.

    SoratError                     500 server_error
    ├── RequestError               400 invalid_request_error
    │   ├── PayloadTooLarge        413 invalid_request_error
    │   └── RequestTimeout         408 invalid_request_error (the body did not arrive)
    ├── AuthError                  401 authentication_error (code invalid_api_key)
    ├── PermissionDenied           403 permission_error
    ├── NotFound                   404 not_found_error
    ├── NoProvider                 503 api_error
    └── ProviderError              502 api_error   (provider failed or rejected sorat's key)
        ├── ProviderRejected       400 invalid_request_error (the provider's own 400/404/422)
        │   └── ContextWindowExceeded
        ├── RateLimited            429 rate_limit_error (code rate_limit_exceeded; ``retry_after``)
        └── ProviderTimeout        504 api_error
"""

from __future__ import annotations

from typing import Any


class SoratError(Exception):
    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class RequestError(SoratError):
    status = 400
    type = "invalid_request_error"


class PayloadTooLarge(RequestError):
    status = 413


class RequestTimeout(RequestError):
    status = 408


class AuthError(SoratError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(SoratError):
    status = 403
    type = "permission_error"


class NotFound(SoratError):
    status = 404
    type = "not_found_error"


class NoProvider(SoratError):
    status = 503
    type = "api_error"


class ProviderError(SoratError):
    status = 502
    type = "api_error"


class ProviderRejected(ProviderError):
    status = 400
    type = "invalid_request_error"


class ContextWindowExceeded(ProviderRejected):
    pass


class RateLimited(ProviderError):
    """The provider's rate limit outlasted sorat's own retries. ``retry_after`` is the seconds its last
    answer asked to wait (its Retry-After), or None: the HTTP layer passes it on as ``Retry-After``."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ProviderTimeout(ProviderError):
    status = 504
