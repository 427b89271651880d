"""Runtime settings, read once from the environment (and overridable by the deployment's args)."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from actors.substrate.limits import Limits
from storage.engine import database_url


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


@dataclass(frozen=True)
class Settings:
    database_url: str
    operator_token: str
    jwt_secret: str = ""  # empty: derived from the operator token
    hub_shards: int = 1  # one shard measured fastest on a 2-core machine; clusters set more
    ledger_shards: int = 1
    reservation_ttl: float = 600.0
    learning_shards: int = 1
    learning_threshold: float = 0.7
    mailbox_shards: int = 1
    flow_shards: int = 1
    flow_limit: int = 4  # running flows per tenant (the default of limits.running_flows)
    flow_capacity: int = 32  # flows one runner runs at once, all tenants together; more wait, fairly
    flow_niceness: int = 10  # flow runners' OS niceness: flows yield the CPU to requests (0 = as requests)
    quota_shards: int = 1
    revocation_shards: int = 1
    accept_legacy_tokens: bool = True  # RAYTENANT_ACCEPT_LEGACY_TOKENS=0: only tokens signed by the key ring
    auto_create_tenants: bool = True  # RAYTENANT_AUTO_CREATE_TENANTS=0: minting for an unknown tenant answers 404
    limits: str = ""  # RAYTENANT_LIMITS: JSON object of default limits (actors/substrate/limits.py)
    llm: str = ""  # RAYTENANT_LLM: empty/"offline" for the OfflineLLM, else a crewai/LiteLLM model string
    llm_latency: float = 0.0  # the OfflineLLM's simulated latency per call (demos, benches)
    hub_channel: bool = True  # latency-path hub calls over the direct channel (actors/substrate/channel.py)
    actor_prefix: str = ""  # lets several deployments (or test databases) share one Ray cluster
    hub_window: int = 1_000
    hub_retention: int = 100_000  # the default of limits.event_retention_count
    max_frame_bytes: int = 64 * 1024
    max_body_bytes: int = 1024 * 1024
    max_events_per_request: int = 1_000
    send_queue_size: int = 1_000
    poll_timeout: float = 10.0
    token_ttl_seconds: int = 24 * 3600
    max_token_ttl: int = 30 * 24 * 3600  # RAYTENANT_MAX_TOKEN_TTL: longer asks answer 422
    llm_providers: str = ""  # RAYTENANT_LLM_PROVIDERS (crews/providers.py): JSON, keys by env var name only
    llm_tenant_models: str = ""  # RAYTENANT_LLM_TENANT_MODELS: which models each tenant may use
    gateway_max_tokens: int = 32_768  # the highest max_tokens a gateway call may ask for
    gateway_default_max_tokens: int = 1_024  # reserved and enforced when a call names none

    @classmethod
    def from_env(cls, **overrides: Any) -> "Settings":
        values: dict[str, Any] = {
            "database_url": database_url(),
            "operator_token": os.environ.get("RAYTENANT_OPERATOR_TOKEN", ""),
            "jwt_secret": os.environ.get("RAYTENANT_JWT_SECRET", ""),
            "hub_shards": _env_int("RAYTENANT_HUB_SHARDS", 1),
            "hub_retention": _env_int("RAYTENANT_EVENT_RETENTION", 100_000),
            "send_queue_size": _env_int("RAYTENANT_SEND_QUEUE", 1_000),
            "hub_channel": os.environ.get("RAYTENANT_HUB_CHANNEL", "1") != "0",
            "ledger_shards": _env_int("RAYTENANT_LEDGER_SHARDS", 1),
            "reservation_ttl": float(os.environ.get("RAYTENANT_RESERVATION_TTL", 600)),
            "learning_shards": _env_int("RAYTENANT_LEARNING_SHARDS", 1),
            "learning_threshold": float(os.environ.get("RAYTENANT_LEARNING_THRESHOLD", 0.7)),
            "mailbox_shards": _env_int("RAYTENANT_MAILBOX_SHARDS", 1),
            "flow_shards": _env_int("RAYTENANT_FLOW_SHARDS", 1),
            "flow_limit": _env_int("RAYTENANT_FLOW_LIMIT", 4),
            "flow_capacity": _env_int("RAYTENANT_FLOW_CAPACITY", 32),
            "flow_niceness": _env_int("RAYTENANT_FLOW_NICENESS", 10),
            "quota_shards": _env_int("RAYTENANT_QUOTA_SHARDS", 1),
            "revocation_shards": _env_int("RAYTENANT_REVOCATION_SHARDS", 1),
            "accept_legacy_tokens": os.environ.get("RAYTENANT_ACCEPT_LEGACY_TOKENS", "1") != "0",
            "auto_create_tenants": os.environ.get("RAYTENANT_AUTO_CREATE_TENANTS", "1") != "0",
            "limits": os.environ.get("RAYTENANT_LIMITS", ""),
            "max_token_ttl": _env_int("RAYTENANT_MAX_TOKEN_TTL", 30 * 24 * 3600),
            "llm": os.environ.get("RAYTENANT_LLM", ""),
            "llm_latency": float(os.environ.get("RAYTENANT_LLM_LATENCY", 0)),
            "llm_providers": os.environ.get("RAYTENANT_LLM_PROVIDERS", ""),
            "llm_tenant_models": os.environ.get("RAYTENANT_LLM_TENANT_MODELS", ""),
            "gateway_max_tokens": _env_int("RAYTENANT_GATEWAY_MAX_TOKENS", 32_768),
            "gateway_default_max_tokens": _env_int("RAYTENANT_GATEWAY_DEFAULT_MAX_TOKENS", 1_024),
        }
        known = {f.name for f in fields(cls)}
        values.update({k: v for k, v in overrides.items() if k in known and v is not None})
        settings = cls(**values)
        if not settings.operator_token:
            raise ValueError("an operator token is required (RAYTENANT_OPERATOR_TOKEN)")
        settings.default_limits()  # refuse bad RAYTENANT_LIMITS at start, not at the first request
        return settings

    def default_limits(self) -> Limits:
        """Every tenant's limits unless the operator set others: the built-in defaults, the
        RAYTENANT_FLOW_LIMIT and RAYTENANT_EVENT_RETENTION shortcuts, then RAYTENANT_LIMITS."""
        import json

        base = Limits(running_flows=self.flow_limit, event_retention_count=self.hub_retention)
        return base.with_overrides(json.loads(self.limits)) if self.limits.strip() else base

    def engines(self, replicas: int) -> int:
        """Database engines the deployment holds: one per shard of every kind, two per ingress
        replica (credentials and limits); each holds at most pool size + overflow connections."""
        shards = (self.hub_shards + self.ledger_shards + self.learning_shards + self.mailbox_shards
                  + self.flow_shards + self.quota_shards + self.revocation_shards)
        return shards + 2 * replicas

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_(self, **changes: Any) -> "Settings":
        return replace(self, **changes)
