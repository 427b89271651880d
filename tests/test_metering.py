"""MeteredLLM in a real crewai crew against the real ledger actor; a scripted LLM stands in for the
paid provider (the one thing that cannot run here)."""
from __future__ import annotations

import asyncio

import pytest
from crewai import Agent, Crew, Process, Task
from crewai.llms.base_llm import BaseLLM

from actors.event_hub.notifications import StreamNotifier
from actors.ledger.core import LedgerError
from actors.ledger.prices import NANOS, default_catalog
from crews.metering import (
    BudgetExceeded,
    Meter,
    MeteredLLM,
    MeteringError,
    estimate_input_tokens,
)
from crews.runs import announce_failure, run_crew
from storage.models import ReservationRow, UsageRow
from tests.http_support import stored

pytestmark = pytest.mark.integration
MODEL = "gpt-4o-mini"


class ScriptedLLM(BaseLLM):
    """Answers every prompt at once and reports fixed token usage, as a provider would."""

    prompt_tokens: int = 1200
    completion_tokens: int = 300
    calls: int = 0

    def call(self, messages, tools=None, callbacks=None, available_functions=None, from_task=None,
             from_agent=None, response_model=None):
        self.calls += 1
        self._track_token_usage_internal({"prompt_tokens": self.prompt_tokens,
                                          "completion_tokens": self.completion_tokens, "cached_tokens": 200})
        return f"Thought: I know the answer.\nFinal Answer: result {self.calls}"


class SilentLLM(ScriptedLLM):
    """A provider that reports no usage: the meter counts the tokens itself."""

    def call(self, *args, **kwargs):
        self.calls += 1
        return "Final Answer: " + "x" * 400


def crew_of(llm: MeteredLLM, tasks: int) -> Crew:
    agent = Agent(role="Field mapper", goal="map fields", backstory="careful", llm=llm, max_iter=2,
                  allow_delegation=False, verbose=False)
    work = [Task(name=f"step-{i}", description=f"Do step {i}", expected_output="a result", agent=agent)
            for i in range(tasks)]
    return Crew(agents=[agent], tasks=work, process=Process.sequential, verbose=False)


def cost(inp: int, out: int, cached: int = 0) -> int:
    return default_catalog().lookup(MODEL).cost_nanos(inp, out, cached)


async def test_budget_exhausted_mid_crew_ends_flow_as_failed(live, tenant, db_url):
    cap = 1000
    reserved = cost(200, cap)  # a call reserves its prompt estimate (< 200 tokens here) + the output cap
    settled = cost(1200, 300, 200)  # and settles what the provider reported
    assert reserved > settled
    async with live.client(tenant, scopes=["*"]) as rt:
        # Room for two calls: after two settles what remains is below any third reservation.
        await rt.costs.set_budget((reserved + 1.5 * settled) / NANOS, alert_threshold=1)
    meter = Meter(live.runtime.ledger.call_sync, tenant, flow_id="flow-1")
    inner = ScriptedLLM(model=MODEL, max_tokens=cap)
    llm = MeteredLLM.wrap(inner, meter)
    notifier = StreamNotifier(live.runtime.hub, tenant)
    outcome = await run_crew(crew_of(llm, 4), {}, "flow-1", phase="mapping")
    assert outcome.status == "failed" and outcome.reason == "budget_exceeded"
    await announce_failure(notifier, "flow-1", outcome.error)
    assert outcome.error["remaining"] >= 0 and outcome.error["requested"] > outcome.error["remaining"]
    rows = await stored(db_url, UsageRow, tenant)
    assert len(rows) == inner.calls == 2
    assert {(r["model"], r["agent"], r["flow_id"]) for r in rows} == {(MODEL, "Field mapper", "flow-1")}
    assert [r["task"] for r in sorted(rows, key=lambda r: r["id"])] == ["step-0", "step-1"]
    assert all((r["input_tokens"], r["output_tokens"], r["cached_tokens"]) == (1200, 300, 200) for r in rows)
    async with live.client(tenant) as rt:
        events = (await rt.events.replay())["events"]
        budget_now = await rt.costs.budget()
    failures = [e for e in events if e["type"] == "error_notification"]
    assert len(failures) == 1 and failures[0]["flow_id"] == "flow-1"
    assert failures[0]["data"]["error"]["reason"] == "budget_exceeded"
    assert failures[0]["data"]["error"]["phase"] == "mapping"
    assert events[-1]["type"] == "flow_update" and events[-1]["data"]["status"] == "failed"
    assert budget_now["reserved"] == 0 and budget_now["used"] <= budget_now["monthly_budget"]
    assert llm.get_token_usage_summary().prompt_tokens == 1200 * inner.calls


async def test_crew_within_budget_is_metered_per_call(live, tenant, db_url):
    meter = Meter(live.runtime.ledger.call_sync, tenant, flow_id="flow-2")
    inner = SilentLLM(model=MODEL)
    llm = MeteredLLM.wrap(inner, meter, agent="validator")
    outcome = await run_crew(crew_of(llm, 2), {}, "flow-2")
    assert outcome.ok and "x" * 10 in str(outcome.output)
    rows = await stored(db_url, UsageRow, tenant)
    assert len(rows) == 2 and {r["agent"] for r in rows} == {"validator"}
    # Each call was held under the agent's budget level too: its reservation names the agent.
    assert [r["agent"] for r in await stored(db_url, ReservationRow, tenant)] == ["validator", "validator"]
    assert all(r["output_tokens"] == estimate_input_tokens("Final Answer: " + "x" * 400) for r in rows)
    assert all(r["input_tokens"] > 10 for r in rows)
    # The reservation (worst case) was released down to the settled cost.
    async with live.client(tenant) as rt:
        summary = await rt.costs.summary()
    assert summary["total_requests"] == 2 and summary["by_flow"]["flow-2"]["requests"] == 2


async def test_unknown_model_and_failed_calls(live, tenant, db_url):
    meter = Meter(live.runtime.ledger.call_sync, tenant)
    unpriced = MeteredLLM.wrap(ScriptedLLM(model="house-llm-v0"), meter)
    outcome = await run_crew(crew_of(unpriced, 1), {}, "flow-3")
    assert outcome.status == "failed" and outcome.reason == "unknown_model"
    assert outcome.error["model"] == "house-llm-v0"

    class Broken(ScriptedLLM):
        def call(self, *args, **kwargs):
            raise RuntimeError("provider exploded")

    broken = MeteredLLM.wrap(Broken(model=MODEL), meter)
    with pytest.raises(RuntimeError):
        await asyncio.to_thread(broken.call, "hello")
    async with live.client(tenant, scopes=["*"]) as rt:
        put = await rt.costs.set_budget(1)
        assert put["reserved"] == 0  # the failed call's reservation was released
    assert await stored(db_url, UsageRow, tenant) == []


def test_meter_retries_only_unavailability():
    answers: list = [LedgerError(503, "ledger_unavailable", "down"), {"reservation_id": "r1"}]
    seen = []

    def call(method, tenant, *args):
        seen.append(method)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    meter = Meter(call, "t", backoff=0)
    assert meter.reserve(MODEL, 1, 1) == "r1" and seen == ["reserve", "reserve"]
    answers[:] = [LedgerError(409, "reservation_closed", "settled", state="settled")]
    assert meter.settle("r1", {}) is None  # an earlier attempt already settled it
    answers[:] = [LedgerError(409, "reservation_closed", "expired", state="expired")]
    with pytest.raises(LedgerError):
        meter.settle("r1", {})
    answers[:] = [LedgerError(503, "ledger_unavailable", "down")] * 4
    with pytest.raises(MeteringError) as down:
        meter.reserve(MODEL, 1, 1)
    assert not isinstance(down.value, BudgetExceeded) and down.value.code == "ledger_unavailable"
    answers[:] = [LedgerError(404, "reservation_not_found", "gone")]
    meter.release("r1")  # logged, not raised: it expires anyway
    assert estimate_input_tokens([{"role": "user", "content": "abcd" * 10}], tools=[{"a": 1}]) == 13
