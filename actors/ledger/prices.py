"""Model prices from the catalog crewai ships (LiteLLM's model_prices_and_context_window.json).

The catalog is maintained upstream and updated with crewai; raytenant never hand-writes prices.
Tenants may override a model's price (a negotiated rate, a self-hosted model). A model with no
catalog entry and no override has no price: it is refused, never guessed.

Costs are integer nano-dollars, rounded up, so a budget is never under-charged.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

NANOS = 1_000_000_000


def usd(nanos: int) -> float:
    """Nanodollars (the ledger's exact integer unit) as USD."""
    return round(nanos / NANOS, 9)


PRICED_MODES = {"chat", "completion", "responses"}


@dataclass(frozen=True)
class Price:
    """USD per token. `cached` is the price of an input token read from the provider's cache."""

    input: float
    output: float
    cached: float | None = None

    def cost_nanos(self, input_tokens: int, output_tokens: int, cached_tokens: int = 0) -> int:
        """Cached tokens are the part of the input served from cache (OpenAI's and LiteLLM's usage)."""
        cached_tokens = min(cached_tokens, input_tokens)
        cached_price = self.input if self.cached is None else self.cached
        usd = (input_tokens - cached_tokens) * self.input + cached_tokens * cached_price + output_tokens * self.output
        return math.ceil(round(usd * NANOS, 6))

    def to_dict(self) -> dict[str, float | None]:
        return {"input_per_token": self.input, "output_per_token": self.output, "cached_per_token": self.cached}


def catalog_path() -> Path:
    """RAYTENANT_PRICE_CATALOG, else the file inside the installed crewai (found without importing it)."""
    explicit = os.environ.get("RAYTENANT_PRICE_CATALOG")
    if explicit:
        return Path(explicit)
    spec = importlib.util.find_spec("crewai")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("crewai is not installed and RAYTENANT_PRICE_CATALOG is not set")
    return Path(spec.submodule_search_locations[0]) / "llms" / "litellm_catalog" / "model_prices_and_context_window.json"


class PriceCatalog:
    def __init__(self, prices: dict[str, Price], providers: dict[str, str] | None = None) -> None:
        self._prices = {name.lower(): price for name, price in prices.items()}
        self._names = {name.lower(): name for name in prices}
        self.providers = providers or {}

    @classmethod
    def from_litellm(cls, entries: dict) -> "PriceCatalog":
        prices, providers = {}, {}
        for name, entry in entries.items():
            if not isinstance(entry, dict) or entry.get("mode") not in PRICED_MODES:
                continue
            inp, out = entry.get("input_cost_per_token"), entry.get("output_cost_per_token")
            if not isinstance(inp, (int, float)) or not isinstance(out, (int, float)):
                continue
            cached = entry.get("cache_read_input_token_cost")
            prices[name] = Price(float(inp), float(out), float(cached) if isinstance(cached, (int, float)) else None)
            providers[name] = str(entry.get("litellm_provider", ""))
        return cls(prices, providers)

    @classmethod
    def load(cls, path: Path | None = None) -> "PriceCatalog":
        return cls.from_litellm(json.loads((path or catalog_path()).read_text()))

    def __len__(self) -> int:
        return len(self._prices)

    def canonical(self, model: str) -> str | None:
        """The catalog's name for `model`: exact, or without a provider prefix ("openai/gpt-4o")."""
        key = model.lower()
        if key in self._prices:
            return self._names[key]
        if "/" in key:
            _, _, bare = key.partition("/")
            if bare in self._prices:
                return self._names[bare]
        return None

    def lookup(self, model: str) -> Price | None:
        name = self.canonical(model)
        return self._prices[name.lower()] if name else None

    def search(self, text: str = "", limit: int = 50) -> list[tuple[str, Price]]:
        """Models whose name contains `text`: the exact name first, then prefixes, then by name."""
        text = text.lower()
        found = [k for k in self._prices if text in k]
        found.sort(key=lambda k: (k != text, not k.startswith(text), k))
        return [(self._names[k], self._prices[k]) for k in found[:limit]]


@lru_cache(maxsize=1)
def default_catalog() -> PriceCatalog:
    return PriceCatalog.load()
