"""Who may call what: API keys (header X-API-Key) with roles, and response headers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

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


# Declared in the OpenAPI document (the "Authorize" button of /docs); checked below.
API_KEY_SCHEME = APIKeyHeader(name=API_KEY_HEADER, auto_error=False,
                              description="API key; roles: officer, analyst, admin")  # fmt: skip


def require(*roles: str) -> Callable[..., Awaitable[ApiKey]]:
    """A dependency admitting keys whose role is one of `roles` (async: hashing a key is
    quick, and it spares every request a hop to the thread pool)."""

    async def check(request: Request, supplied: str | None = Security(API_KEY_SCHEME)) -> ApiKey:
        ring: KeyRing = request.app.state.services.keys
        key = ring.identify(supplied)
        if key is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                detail=f"missing or invalid API key; send it in the {API_KEY_HEADER} header",
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
