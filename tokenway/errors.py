"""The one error tree of the gateway, mapped to HTTP status and OpenAI's error envelope here.

Every failure a client can see is a ``GatewayError``; lower-level exceptions (aiohttp, JSON,
engine errors) are mapped to one of these at the boundary where they happen, with
``raise X(...) from exc``. ``envelope()`` is the only place that turns an error into bytes.
"""

from __future__ import annotations

import orjson


class GatewayError(Exception):
    """Base class: an error with an HTTP status and an OpenAI-style type and code."""

    status: int = 500
    type: str = "api_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.retry_after = retry_after
        self.extra_headers = headers or {}

    @property
    def retryable(self) -> bool:
        """Whether another deployment (or a later attempt) might succeed."""
        return False

    def envelope(self) -> bytes:
        return orjson.dumps(
            {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        )

    def headers(self) -> list[tuple[bytes, bytes]]:
        out = [(k.lower().encode(), v.encode()) for k, v in self.extra_headers.items()]
        if self.retry_after is not None:
            out.append((b"retry-after", str(max(1, round(self.retry_after))).encode()))
        return out


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class AuthenticationFailed(GatewayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDenied(GatewayError):
    status = 403
    type = "permission_error"


class ModelNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RequestTimeout(GatewayError):
    """The client did not send its request in time (``limits.body_timeout_s``)."""

    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class HeadersTooLarge(GatewayError):
    """Too many request headers, or too many bytes of them (``limits.max_header_*``)."""

    status = 431
    type = "invalid_request_error"
    code = "request_headers_too_large"


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class BudgetExceeded(RateLimited):
    """OpenAI's answer for a spent quota: 429 ``insufficient_quota`` (the SDK raises RateLimitError)."""

    type = "insufficient_quota"
    code = "insufficient_quota"


class Overloaded(GatewayError):
    """No capacity right now (queue full, deadline cannot be met, nothing healthy)."""

    status = 503
    type = "api_error"
    code = "overloaded"

    @property
    def retryable(self) -> bool:
        return True


class UpstreamError(GatewayError):
    """The backend failed or answered with something that is not a valid response."""

    status = 502
    type = "api_error"
    code = "upstream_error"

    def __init__(self, message: str, *, upstream_status: int | None = None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.upstream_status = upstream_status
        if upstream_status == 429:  # the backend's rate limit is the client's rate limit
            self.status, self.type, self.code = 429, "rate_limit_error", "rate_limit_exceeded"

    @property
    def retryable(self) -> bool:
        return self.upstream_status is None or self.upstream_status >= 500 or self.upstream_status == 429


class UpstreamRejected(GatewayError):
    """The backend refused the request itself (a 4xx other than 429): relayed, never retried."""

    def __init__(self, message: str, *, status: int, body: bytes | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.type = "invalid_request_error"
        self.body = body

    def envelope(self) -> bytes:
        # Pass an upstream OpenAI-style error through unchanged; wrap anything else.
        if self.body:
            try:
                parsed = orjson.loads(self.body)
            except orjson.JSONDecodeError:
                parsed = None
            if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
                return self.body
        return super().envelope()


class UpstreamTimeout(GatewayError):
    status = 504
    type = "api_error"
    code = "upstream_timeout"

    @property
    def retryable(self) -> bool:
        return True


class UpstreamUnavailable(GatewayError):
    """Could not connect to the backend at all."""

    status = 502
    type = "api_error"
    code = "upstream_unavailable"

    @property
    def retryable(self) -> bool:
        return True


class InternalError(GatewayError):
    """A bug in the gateway: the client gets this envelope, the traceback goes to the log only."""

    status = 500
    type = "api_error"
    code = "internal_error"
