"""Who may call what: API keys (header X-API-Key) with roles, and response headers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from fastapi import HTTPException, Request, Security, status
from fastapi.security import APIKeyHeader

from serving.keys import ApiKey, KeyRing

API_KEY_HEADER = "X-API-Key"
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
}
# The one HTML page (/docs, serving/docs.py): Swagger UI's pinned script and styles from
# this origin, its calls to this API, the data: icons of its stylesheet; nothing inline,
# no other host. Every other response keeps `default-src 'none'`.
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
UNAUTHENTICATED = f"missing or invalid API key; send it in the {API_KEY_HEADER} header"
_HEADER_NAME = API_KEY_HEADER.lower().encode()


# Declared in the OpenAPI document (the "Authorize" button of /docs); checked below.
API_KEY_SCHEME = APIKeyHeader(name=API_KEY_HEADER, auto_error=False,
                              description="API key; roles: officer, analyst, admin")  # fmt: skip


def presented_key(ring: KeyRing, headers: Iterable[tuple[bytes, bytes]]) -> ApiKey | None:
    """The key of the first X-API-Key header of raw ASGI headers (as FastAPI reads it), so
    the middleware can refuse a request before its body is read."""
    for name, value in headers:
        if name == _HEADER_NAME:
            return ring.identify(value.decode("latin-1"))
    return None


def require(*roles: str) -> Callable[..., Awaitable[ApiKey]]:
    """A dependency admitting keys whose role is one of `roles` (async: hashing a key is
    quick, and it spares every request a hop to the thread pool). The key is usually
    identified already by the middleware (serving/app.py `Observe`), before the body."""

    async def check(request: Request, supplied: str | None = Security(API_KEY_SCHEME)) -> ApiKey:
        key: ApiKey | None = getattr(request.state, "api_key", None)
        if key is None:
            ring: KeyRing = request.app.state.services.keys
            key = ring.identify(supplied)
        if key is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                detail=UNAUTHENTICATED,
                headers={"WWW-Authenticate": API_KEY_HEADER},
            )
        if key.role not in roles:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                detail=f"role {key.role!r} may not call {request.method} {request.url.path}; "
                f"allowed: {', '.join(roles)}",
            )
        request.state.key_id = key.id
        return key

    return check
