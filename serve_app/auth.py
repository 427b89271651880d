"""Bearer tokens: HS256 JWTs whose claims name the tenant. The tenant never comes from elsewhere.

The operator token is a static secret held by whoever runs the service; it only mints tenant
tokens. The JWT signing key is RAYTENANT_JWT_SECRET or, when unset, derived from the operator
token, so a deployment configures one secret.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

import jwt
from starlette.datastructures import Headers, QueryParams
from starlette.types import Scope

ALGORITHM = "HS256"
# What a token minted without scopes may do: everything a tenant's applications do, none of the
# admin scopes. `costs:admin` (the tenant's own budgets, inside the operator's cap) must be asked
# for by name; "*" grants every tenant scope. No tenant scope reaches the operator's routes.
TENANT_SCOPES = ("events:read", "events:write", "costs:read", "costs:write", "learning:read", "learning:write",
                 "agents:read", "agents:write", "flows:read", "flows:write", "llm:call")
ADMIN_SCOPES = ("costs:admin",)
DEFAULT_SCOPES = TENANT_SCOPES
TENANT_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


class AuthError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Claims:
    tenant: str
    user: str | None
    engagement: str | None
    scopes: tuple[str, ...]
    exp: int

    def allows(self, scope: str) -> bool:
        return "*" in self.scopes or scope in self.scopes


def new_operator_token() -> str:
    return "rt-op-" + secrets.token_urlsafe(32)


def derive_secret(operator_token: str) -> str:
    return hmac.new(operator_token.encode(), b"raytenant-jwt-v1", hashlib.sha256).hexdigest()


def valid_tenant(tenant: object) -> bool:
    return isinstance(tenant, str) and bool(TENANT_PATTERN.fullmatch(tenant))


MAX_TTL = 30 * 24 * 3600  # the longest a token may live (RAYTENANT_MAX_TOKEN_TTL): a leaked one expires


class Tokens:
    def __init__(self, operator_token: str, jwt_secret: str = "", *, default_ttl: int = 24 * 3600,
                 max_ttl: int = MAX_TTL) -> None:
        if not operator_token:
            raise ValueError("operator token must not be empty")
        self._operator_token = operator_token
        self._secret = jwt_secret or derive_secret(operator_token)
        self.default_ttl, self.max_ttl = min(default_ttl, max_ttl), max_ttl
        self.cache_size = 10_000
        self._verified: dict[str, Claims] = {}

    def is_operator(self, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(token.encode(), self._operator_token.encode())

    def mint(
        self,
        tenant: str,
        *,
        user: str | None = None,
        engagement: str | None = None,
        scopes: tuple[str, ...] | list[str] = DEFAULT_SCOPES,
        ttl: int | None = None,
        now: float | None = None,
    ) -> tuple[str, int]:
        """A signed tenant token and its expiry (epoch seconds)."""
        if not valid_tenant(tenant):
            raise ValueError("tenant must be 1-128 characters of letters, digits and . _ : -")
        ttl = self.default_ttl if ttl is None else ttl
        if not 0 < ttl <= self.max_ttl:
            raise ValueError(f"ttl must be between 1 and {self.max_ttl} seconds")
        exp = int((now or time.time()) + ttl)
        claims = {"tenant": tenant, "user": user, "engagement": engagement, "scopes": list(scopes), "exp": exp}
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM), exp

    def verify(self, token: str | None) -> Claims:
        """The token's claims. Verified tokens are cached until they expire: a busy client sends
        the same token with every request, and checking the signature each time costs more than
        the rest of a small request."""
        if not token:
            raise AuthError("missing_token", "a bearer token is required")
        cached = self._verified.get(token)
        if cached is not None:
            if cached.exp > time.time():
                return cached
            del self._verified[token]
        claims = self._verify(token)
        if len(self._verified) >= self.cache_size:
            self._verified.pop(next(iter(self._verified)))
        self._verified[token] = claims
        return claims

    def _verify(self, token: str) -> Claims:
        try:
            claims = jwt.decode(token, self._secret, algorithms=[ALGORITHM], options={"require": ["exp", "tenant"]})
        except jwt.ExpiredSignatureError as error:
            raise AuthError("token_expired", "the token has expired") from error
        except jwt.InvalidTokenError as error:
            raise AuthError("invalid_token", f"the token is not valid: {error}") from error
        tenant = claims.get("tenant")
        scopes = claims.get("scopes", list(DEFAULT_SCOPES))
        if not valid_tenant(tenant) or not isinstance(scopes, list) or not scopes:
            raise AuthError("invalid_token", "the token's claims are malformed")
        return Claims(tenant, claims.get("user"), claims.get("engagement"), tuple(map(str, scopes)), int(claims["exp"]))


def bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


# Browsers cannot set headers on a WebSocket: they pass the token as the second of two offered
# subprotocols (`new WebSocket(url, ["raytenant", token])`), which proxies do not log as they log
# query strings. The server answers with the first.
SUBPROTOCOL = "raytenant"


def socket_token(scope: Scope) -> tuple[str | None, bool]:
    """A WebSocket's token (header, subprotocol or query string) and whether it came as a
    subprotocol (the accept must then name SUBPROTOCOL)."""
    offered = scope.get("subprotocols") or []
    by_protocol = offered[1] if len(offered) == 2 and offered[0] == SUBPROTOCOL else None
    token = bearer(Headers(scope=scope).get("authorization")) or by_protocol \
        or QueryParams(scope.get("query_string", b"")).get("token")
    return token, by_protocol is not None

