"""Bearer tokens: HS256 JWTs whose claims name the tenant. The tenant never comes from elsewhere.

The operator token is a static secret held by whoever runs the service; it mints tenant tokens and
reaches the admin routes, but it does not sign them. Tokens are signed with the key ring's keys
(storage: `signing_keys`, generated at first start, rotated with `raytenant keys rotate`), named
by the token's `kid` header, so a rotation keeps earlier tokens valid until their key retires.
Every token carries `jti` (its id) and `iat` (when it was issued), which revocations name.

Tokens without a `kid` (minted by a `Tokens` without the ring: the benches, or before key rings)
verify with the legacy secret, RAYTENANT_JWT_SECRET or one derived from the operator token,
unless RAYTENANT_ACCEPT_LEGACY_TOKENS=0, which a deployment should set: with it, a leaked operator
token can no longer forge a tenant's token offline.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from typing import Callable, Iterable

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
    def __init__(self, code: str, message: str, claims: "Claims | None" = None, status: int = 401) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.claims = claims  # a refused valid token's claims: whose attempt it was, for the audit log
        self.status = status  # 401: no valid token; 403: a valid token of a suspended tenant


@dataclass(frozen=True)
class Claims:
    tenant: str
    user: str | None
    engagement: str | None
    scopes: tuple[str, ...]
    exp: int
    iat: float = 0.0  # when it was issued (epoch seconds); 0 for tokens that do not say
    jti: str | None = None
    kid: str | None = None

    def allows(self, scope: str) -> bool:
        return "*" in self.scopes or scope in self.scopes


def new_operator_token() -> str:
    return "rt-op-" + secrets.token_urlsafe(32)


def derive_secret(operator_token: str) -> str:
    return hmac.new(operator_token.encode(), b"raytenant-jwt-v1", hashlib.sha256).hexdigest()


def valid_tenant(tenant: object) -> bool:
    return isinstance(tenant, str) and bool(TENANT_PATTERN.fullmatch(tenant))


MAX_TTL = 30 * 24 * 3600  # the longest a token may live (RAYTENANT_MAX_TOKEN_TTL): a leaked one expires
JTI_PATTERN = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class SigningKey:
    kid: str
    secret: str
    signs_from: float  # epoch seconds: a new key is known to every replica before it signs
    retire_at: float | None = None  # from then on, tokens it signed are refused

    def verifies(self, now: float) -> bool:
        return self.retire_at is None or now < self.retire_at


class KeyRing:
    """The signing keys one process knows (refreshed from storage by its owner). The newest key
    whose `signs_from` has passed signs; every key verifies until it retires."""

    def __init__(self, keys: Iterable[SigningKey] = ()) -> None:
        self._keys: dict[str, SigningKey] = {}
        self.replace(keys)

    def replace(self, keys: Iterable[SigningKey]) -> None:
        self._keys = {key.kid: key for key in keys}

    def signing(self, now: float) -> SigningKey | None:
        usable = [k for k in self._keys.values() if k.signs_from <= now and k.verifies(now)]
        return max(usable, key=lambda k: k.signs_from, default=None)

    def get(self, kid: str) -> SigningKey | None:
        return self._keys.get(kid)

    def __len__(self) -> int:
        return len(self._keys)


class Tokens:
    def __init__(self, operator_token: str, jwt_secret: str = "", *, default_ttl: int = 24 * 3600,
                 max_ttl: int = MAX_TTL, ring: KeyRing | None = None, accept_legacy: bool = True) -> None:
        if not operator_token:
            raise ValueError("operator token must not be empty")
        self._operator_token = operator_token
        self._secret = jwt_secret or derive_secret(operator_token)
        self.ring = ring
        self.accept_legacy = accept_legacy
        self.default_ttl, self.max_ttl = min(default_ttl, max_ttl), max_ttl
        self.cache_size = 10_000
        self._verified: dict[str, Claims] = {}
        # Set by the runtime: whether verified claims are revoked (the replica's view of the
        # revocation shards), and what to do about a key id this process does not know yet.
        self.revoked: Callable[[Claims], bool] | None = None
        self.suspended: Callable[[str], bool] | None = None
        self.unknown_key: Callable[[str], None] | None = None

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
        now = now or time.time()
        exp = int(now + ttl)
        claims = {"tenant": tenant, "user": user, "engagement": engagement, "scopes": list(scopes), "exp": exp,
                  "iat": round(now, 3), "jti": secrets.token_hex(16)}
        key = self.ring.signing(now) if self.ring is not None else None
        if key is None:
            if self.ring is not None and not self.accept_legacy:
                raise LookupError("no signing key is usable yet; legacy tokens are refused here")
            return jwt.encode(claims, self._secret, algorithm=ALGORITHM), exp
        return jwt.encode(claims, key.secret, algorithm=ALGORITHM, headers={"kid": key.kid}), exp

    def verify(self, token: str | None) -> Claims:
        """The token's claims. Verified tokens are cached until they expire: a busy client sends
        the same token with every request, and checking the signature each time costs more than
        the rest of a small request."""
        if not token:
            raise AuthError("missing_token", "a bearer token is required")
        now = time.time()
        claims = self._verified.get(token)
        if claims is not None and (claims.exp <= now or not self.key_verifies(claims.kid, now)):
            del self._verified[token]
            claims = None
        if claims is None:
            claims = self._verify(token, now)
            if len(self._verified) >= self.cache_size:
                self._verified.pop(next(iter(self._verified)))
            self._verified[token] = claims
        if self.revoked is not None and self.revoked(claims):
            raise AuthError("token_revoked", "the token has been revoked", claims)
        if self.suspended is not None and self.suspended(claims.tenant):
            raise AuthError("tenant_suspended", "the tenant is suspended", claims, status=403)
        return claims

    def key_verifies(self, kid: str | None, now: float) -> bool:
        """Whether tokens signed with `kid` (None: the legacy secret) are accepted at `now`."""
        if kid is None:
            return self.accept_legacy
        key = self.ring.get(kid) if self.ring is not None else None
        return key is not None and key.verifies(now)

    def _key(self, token: str, now: float) -> tuple[str | None, str]:
        """The token's key id and the secret that verifies it."""
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.InvalidTokenError as error:
            raise AuthError("invalid_token", f"the token is not valid: {error}") from error
        if kid is None:
            if not self.accept_legacy:
                raise AuthError("invalid_token", "tokens without a key id are not accepted")
            return None, self._secret
        key = self.ring.get(kid) if self.ring is not None and isinstance(kid, str) else None
        if key is None:
            if self.unknown_key is not None and isinstance(kid, str):
                self.unknown_key(kid)  # a key newer than this process's ring: refresh it
            raise AuthError("invalid_token", "the token's signing key is not known")
        if not key.verifies(now):
            raise AuthError("key_retired", "the token's signing key has been retired")
        return kid, key.secret

    def _verify(self, token: str, now: float) -> Claims:
        kid, secret = self._key(token, now)
        try:
            # iat is what revocations compare, not a validity bound: a replica whose clock is behind
            # the minting one must not refuse a fresh token.
            claims = jwt.decode(token, secret, algorithms=[ALGORITHM],
                                options={"require": ["exp", "tenant"], "verify_iat": False})
        except jwt.ExpiredSignatureError as error:
            raise AuthError("token_expired", "the token has expired") from error
        except jwt.InvalidTokenError as error:
            raise AuthError("invalid_token", f"the token is not valid: {error}") from error
        tenant = claims.get("tenant")
        scopes = claims.get("scopes", list(DEFAULT_SCOPES))
        iat, jti = claims.get("iat", 0.0), claims.get("jti")
        if (not valid_tenant(tenant) or not isinstance(scopes, list) or not scopes
                or isinstance(iat, bool) or not isinstance(iat, (int, float)) or (jti is not None and not isinstance(jti, str))):
            raise AuthError("invalid_token", "the token's claims are malformed")
        return Claims(tenant, claims.get("user"), claims.get("engagement"), tuple(map(str, scopes)), int(claims["exp"]),
                      float(iat), jti, kid)


def minted_ids(token: str) -> tuple[str | None, str | None]:
    """The jti and kid of a token this process just minted (read back, not verified: a token
    minted at a revocation's boundary must still be answered)."""
    claims = jwt.decode(token, options={"verify_signature": False})
    return claims.get("jti"), jwt.get_unverified_header(token).get("kid")


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

