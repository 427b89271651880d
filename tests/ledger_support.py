"""The ledger core on a real database with a controlled clock and a hand-computable catalog, as
the ledger and budget-level tests drive it."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import select

from actors.ledger.core import LedgerCore, LedgerOptions
from actors.ledger.prices import PriceCatalog
from storage.engine import create_engine
from storage.ledger import LedgerStore
from storage.models import UsageRow

CATALOG = PriceCatalog.from_litellm({
    "sample_spec": {"mode": "chat", "input_cost_per_token": 0, "output_cost_per_token": 0},
    "big-model": {"mode": "chat", "input_cost_per_token": 1e-5, "output_cost_per_token": 3e-5,
                  "cache_read_input_token_cost": 1e-6, "litellm_provider": "acme"},
    "small-model": {"mode": "chat", "input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6,
                    "litellm_provider": "acme"},
    "embedder": {"mode": "embedding", "input_cost_per_token": 1e-7, "output_cost_per_token": 0},
})


QUALITY = {"big-model": 0.9, "small-model": 0.88}


class Clock:
    def __init__(self, when: datetime) -> None:
        self.now = when.timestamp()

    def __call__(self) -> float:
        return self.now

    def set(self, when: datetime) -> None:
        self.now = when.timestamp()


class Ledger:
    """A LedgerCore on the real database, with alerts captured and a restart that keeps the database."""

    def __init__(self, url: str, clock: Clock, **options) -> None:
        self.url, self.clock, self.options = url, clock, LedgerOptions(**options)
        self.alerts: list[tuple[str, dict]] = []
        self.engine = create_engine(url)
        self.core = self._core()

    def _core(self) -> LedgerCore:
        async def notify(tenant: str, alert: dict) -> None:
            self.alerts.append((tenant, alert))

        core = LedgerCore(LedgerStore(self.engine), self.options, catalog=CATALOG, notify=notify, clock=self.clock)
        core.quality = dict(QUALITY)
        return core

    def restart(self) -> LedgerCore:
        self.core = self._core()
        return self.core

    async def rows(self, tenant: str, model=UsageRow) -> list[dict]:
        async with self.engine.connect() as conn:
            result = await conn.execute(select(model).where(model.tenant == tenant))
            return [dict(r) for r in result.mappings()]


def record(model="big-model", inp=1000, out=500, **extra):
    return {"model": model, "input_tokens": inp, "output_tokens": out, **extra}
