"""LLM providers the operator configured, and the one forward path to them.

`RAYTENANT_LLM_PROVIDERS` is JSON: `{"name": {"base_url": "...", "api_key_env": "ENV_VAR", "models":
["gpt-4o-mini", ...]}}`. The key is read from the named environment variable when a call is made:
it is never stored in settings, returned or logged. `RAYTENANT_LLM_TENANT_MODELS` says which models
each tenant may use (`{"acme": ["gpt-4o-mini"], "*": [...]}`; without it every tenant may use every
configured model).

Both callers go through this module with the same rule, reserve the worst case, forward with that
worst case as `max_tokens`, settle with what the provider reported:

- the gateway (serve_app/routes/llm.py) for the tenants' own applications, async;
- `ProviderLLM` (crews/provider_llm.py), the crewai LLM that MeteredLLM wraps when RAYTENANT_LLM
  names a configured model.

This module does not import crewai: the ingress replicas read it, and crewai is heavy.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any


MESSAGE_OVERHEAD = 8  # tokens a chat format adds per message (role, separators), an over-count


@dataclass(frozen=True)
class Provider:
    name: str
    base_url: str
    api_key_env: str
    models: tuple[str, ...]
    timeout: float = 60.0

    @property
    def api_key(self) -> str:
        return os.environ.get(self.api_key_env, "")


class Providers:
    """The operator's provider table and per-tenant model grants."""

    def __init__(self, providers: dict[str, Provider], grants: dict[str, set[str]] | None = None) -> None:
        self.providers = providers
        self.grants = grants
        self._by_model = {model.lower(): p for p in providers.values() for model in p.models}

    @classmethod
    def from_json(cls, providers: str, grants: str = "") -> "Providers":
        table = json.loads(providers) if providers.strip() else {}
        if not isinstance(table, dict):
            raise ValueError("RAYTENANT_LLM_PROVIDERS must be a JSON object")
        found = {}
        for name, spec in table.items():
            if not isinstance(spec, dict) or not isinstance(spec.get("base_url"), str) or \
                    not isinstance(spec.get("models"), list):
                raise ValueError(f"provider {name!r} needs base_url and models")
            found[name] = Provider(name, spec["base_url"].rstrip("/"), str(spec.get("api_key_env", "OPENAI_API_KEY")),
                                   tuple(str(m) for m in spec["models"]), float(spec.get("timeout", 60.0)))
        parsed = json.loads(grants) if grants.strip() else None
        if parsed is not None and not (isinstance(parsed, dict) and all(isinstance(v, list) for v in parsed.values())):
            raise ValueError("RAYTENANT_LLM_TENANT_MODELS must map tenants to lists of models")
        return cls(found, {t: {str(m).lower() for m in ms} for t, ms in parsed.items()} if parsed is not None else None)

    @classmethod
    def from_env(cls) -> "Providers":
        return cls.from_json(os.environ.get("RAYTENANT_LLM_PROVIDERS", ""),
                             os.environ.get("RAYTENANT_LLM_TENANT_MODELS", ""))

    def for_model(self, model: str) -> Provider | None:
        return self._by_model.get(model.lower())

    def allows(self, tenant: str, model: str) -> bool:
        if self.grants is None:
            return True
        granted = self.grants.get(tenant, self.grants.get("*", set()))
        return model.lower() in granted


def _content_bytes(content: Any) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return len(content.encode("utf-8"))
    return len(json.dumps(content, ensure_ascii=False).encode("utf-8"))


def prompt_bound(messages: list[Any], tools: Any = None) -> int:
    """An upper bound on the prompt's tokens that holds for every byte-level BPE tokenizer: no
    token is shorter than one byte. Reserving it means a provider's count can never exceed the
    reservation, so a hostile prompt cannot overrun; the settle frees what was not used."""
    total = 0
    for message in messages:
        if isinstance(message, dict):
            total += MESSAGE_OVERHEAD + sum(_content_bytes(v) for v in message.values())
        else:
            total += MESSAGE_OVERHEAD + _content_bytes(message)
    return total + (_content_bytes(tools) if tools else 0) + MESSAGE_OVERHEAD


def usage_of(usage: Any) -> dict[str, int]:
    """Ledger token counts from an OpenAI usage object or dict."""
    if usage is None:
        return {"input_tokens": 0, "output_tokens": 0, "cached_tokens": 0}
    get = usage.get if isinstance(usage, dict) else (lambda k, d=None: getattr(usage, k, d))
    details = get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens") if isinstance(details, dict) else getattr(details, "cached_tokens", 0)
    prompt = int(get("prompt_tokens", 0) or 0)
    return {"input_tokens": prompt, "output_tokens": int(get("completion_tokens", 0) or 0),
            "cached_tokens": min(int(cached or 0), prompt)}
