"""FlowRunnerCore: runs a tenant's discovery and optimisation flows, phase by phase, durably.

A flow's crew runs in a worker thread. When a phase's task finishes, the crew's thread waits while
the runner stores the phase's result and streams it (agent_insight phase_completed, flow_update),
hands a note to the next agent through the Mailbox, and announces the next phase: what a client
has seen is already stored, and a runner that dies mid-flow is restarted by Ray and resumes every
unfinished flow it owns after its last finished phase.

Flows are placed on runners by tenant (the same rendezvous hashing as every shard), so one runner
counts a tenant's running flows and the per-tenant limit needs no distributed lock.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from actors.event_hub.notifications import StreamNotifier
from actors.flows import learning as flow_learning
from actors.flows.fair_queue import FairQueue
from actors.flows.options import FlowOptions
from actors.substrate.limits import LimitsCache
from actors.substrate.metrics import NO_METRICS, MetricSink
from actors.substrate.operations import ActorError, refused_commit
from actors.substrate.placement import shard_for
from actors.substrate.turns import TenantTurns
from crews.agents import REGISTRY
from crews.crew_builder import build_crew
from crews.field_mapping import acceptance, correction
from crews.field_matcher import parse_schema
from crews.flow_context import FlowContext
from crews.metering import FlowCancelled, Meter, MeteredLLM
from crews.offline_llm import llm_for
from crews.phases import phase_result, phases_of
from crews.runs import PhaseFailed, announce_failure, run_crew
from storage.flows import ACTIVE, FlowStore

log = logging.getLogger("raytenant.flows")

ANSWER_CHARS = 4_000  # of the LLM's final answer kept with a phase's result


class FlowError(ActorError):
    """A refused flow operation (status, code, message, details)."""


@dataclass
class Services:
    """The clients a runner reaches other actors through (the runner holds no one else's state)."""

    hub: Any
    ledger: Any
    learning: Any
    mailbox: Any


@dataclass
class Run:
    row: dict[str, Any]
    context: FlowContext
    stop: threading.Event = field(default_factory=threading.Event)
    pause: threading.Event = field(default_factory=threading.Event)  # its tenant was suspended
    phase: str | None = None
    handoffs: dict[str, list[Any]] = field(default_factory=dict)
    started: float = 0.0  # monotonic time the current phase started
    task: asyncio.Task | None = None
    crew: Any = None  # its crewai Crew once built: a phase's task gets what the tenant taught before it runs


def _now() -> datetime:
    return datetime.now(timezone.utc)


def view(row: dict[str, Any], *, full: bool = True) -> dict[str, Any]:
    """A flow as clients see it. The list view leaves out input and results."""
    found = {
        "flow_id": row["id"], "name": row["name"], "kind": row["kind"], "process": row["process"],
        "status": row["status"], "phase": row["phase"], "progress": row["progress"], "error": row["error"],
        "attempts": row["attempts"],
        **{k: row[k].isoformat() if row[k] else None for k in ("created_at", "updated_at", "started_at", "finished_at")},
    }
    if full:
        found["phases"] = [p.name for p in phases_of(row["kind"])]
        found["results"] = row["results"]
    return found


class FlowRunnerCore:
    def __init__(self, store: FlowStore, services: Services, options: FlowOptions = FlowOptions(), *,
                 index: int = 0, metrics: MetricSink = NO_METRICS, limits: LimitsCache | None = None) -> None:
        self.store, self.services, self.options, self.index = store, services, options, index
        self.metrics = metrics
        self.limits = limits or LimitsCache(None, options.limits)
        self.runs: dict[str, Run] = {}
        # Flows stored but not yet started or queued by `_create`: a sweep (`resume`) that reads
        # them from storage meanwhile must leave them to it, or the flow runs twice.
        self.unstarted: set[str] = set()
        self.queued = FairQueue()  # flows waiting for a runner slot or for their tenant's running limit
        self.executor = ThreadPoolExecutor(max_workers=options.threads, thread_name_prefix="crew")
        self.resumed = asyncio.Event()
        self.creating: Counter[str] = Counter()  # flows of a tenant being stored: they count as running
        self.queuing: Counter[str] = Counter()  # flows of a tenant being stored as queued: they count as queued
        self.correcting = TenantTurns()  # by flow id
        self.suspended: set[str] = set()  # tenants the operator suspended: nothing of theirs starts
        self.counters = {"started": 0, "resumed": 0, "completed": 0, "failed": 0, "cancelled": 0}
        self.phase_seconds: dict[str, tuple[float, int]] = {}  # phase -> (total seconds, phases run)

    # -- operations (tenant first: the shard call convention) ---------------------------------------
    def _running(self, tenant: str) -> int:
        return sum(1 for r in self.runs.values() if r.row["tenant"] == tenant) + self.creating[tenant]

    def _free_slots(self) -> int:
        return self.options.threads - len(self.runs) - sum(self.creating.values())

    async def create(self, tenant: str, spec: dict[str, Any]) -> dict[str, Any]:
        """Start a flow now if the runner has a free slot and the tenant is under its running
        limit; else queue it (status `queued`) up to the tenant's queue limit, then refuse (429)."""
        await self.resumed.wait()  # the running count is complete only once resumed flows are back
        limits = await self.limits.of(tenant)
        queue_it = self._running(tenant) >= limits.running_flows or self._free_slots() <= 0
        counter = self.queuing if queue_it else self.creating
        if queue_it and self.queued.count(tenant) + self.queuing[tenant] >= limits.queued_flows:
            held = self.queued.count(tenant) + self.queuing[tenant]
            self.metrics.inc("raytenant_limit_refusals", limit="queued_flows")
            raise FlowError(429, "quota_exceeded", f"this tenant runs {self._running(tenant)} flows and has {held} "
                            f"queued of {limits.queued_flows}; wait for one to end", limit="queued_flows",
                            running=self._running(tenant), queued=held, retry_after=5)
        counter[tenant] += 1  # held across the awaits below, so concurrent creates see it
        try:
            return await self._create(tenant, spec, queued=queue_it)
        finally:
            counter[tenant] -= 1
            if not counter[tenant]:
                del counter[tenant]
            self._schedule()

    def _schedule(self) -> None:
        """Start queued flows while the runner has free slots: fairly across tenants (FairQueue),
        each tenant within its running limit, weighted by its flow weight."""
        while self._free_slots() > 0:
            row = self.queued.pop(lambda t: t not in self.suspended
                                  and self._running(t) < self.limits.peek(t).running_flows)
            if row is None:
                return
            self._start(row)

    async def set_limits(self, tenant: str, overrides: dict[str, Any] | None) -> dict[str, Any]:
        limits = self.limits.put(tenant, overrides)
        self._schedule()  # a higher running limit starts queued flows at once
        return limits.to_dict()

    async def _create(self, tenant: str, spec: dict[str, Any], *, queued: bool = False) -> dict[str, Any]:
        now = _now()
        row = {
            "id": uuid.uuid4().hex, "tenant": tenant, "runner": self.options.kind, "name": spec["name"],
            "kind": spec["kind"],
            "process": spec.get("process", "sequential"), "status": "queued" if queued else "initialized",
            "phase": None, "progress": 0,
            "input": {k: spec.get(k) for k in ("data", "source_schema", "target_schema")}, "results": {},
            "error": None, "attempts": 0, "created_at": now, "updated_at": now, "started_at": None, "finished_at": None,
        }
        self.unstarted.add(row["id"])
        try:
            try:
                await self.store.create(row)
            except Exception as error:  # noqa: BLE001 - nothing was stored; the client may retry
                log.warning("could not store flow: %r", error)
                raise refused_commit(error, FlowError) from error
            try:  # announced before its run starts, so the stream shows initialized first
                await self._notifier(tenant).send_flow_update(row["id"], {"status": row["status"], "phase": None,
                                                                          "progress": 0, "updated_at": now.isoformat()})
            except Exception:  # noqa: BLE001 - the flow is stored: it runs and is acknowledged all the same
                log.warning("the start of flow %s was not streamed", row["id"], exc_info=True)
            answer = view(row)
            if queued:
                self.queued.push(row)
            else:
                self._start(row)
            return answer
        finally:
            self.unstarted.discard(row["id"])

    # -- the tenant's lifecycle (serve_app/tenants.py) -----------------------------------------------
    async def suspend(self, tenant: str) -> dict[str, Any]:
        """The tenant's running flows stop after the phase they are in (status `suspended`, their
        finished phases kept) and its queued flows wait, until `resume`."""
        self.suspended.add(tenant)
        running = [run for run in self.runs.values() if run.row["tenant"] == tenant]
        for run in running:
            run.pause.set()
        return {"tenant": tenant, "pausing": len(running), "queued": self.queued.count(tenant)}

    async def resume_tenant(self, tenant: str) -> dict[str, Any]:
        """Queue the tenant's suspended flows again (they continue after their last finished
        phase) and let its queued flows start."""
        self.suspended.discard(tenant)
        resumed = 0
        for row in await self.store.list_full(tenant, "suspended", self.options.kind):
            if row["id"] not in self.queued and await self.store.unpark(row["id"]):
                self.queued.push({**row, "status": "queued"})
                resumed += 1
        self._schedule()
        return {"tenant": tenant, "resumed": resumed}

    async def forget(self, tenant: str, wait: float = 30.0) -> dict[str, Any]:
        """Before the tenant's data is purged: its queued flows are dropped and its running flows
        stopped (at their next LLM call or phase boundary), waited for up to `wait` seconds."""
        for row in [r for r in self.queued.rows() if r["tenant"] == tenant]:
            self.queued.remove(row["id"])
        running = [run for run in self.runs.values() if run.row["tenant"] == tenant]
        for run in running:
            run.stop.set()
        tasks = [run.task for run in running if run.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=wait)
        self.suspended.discard(tenant)
        self.limits.forget(tenant)
        return {"tenant": tenant, "stopped": len(running),
                "still_running": sum(1 for run in self.runs.values() if run.row["tenant"] == tenant)}

    async def get(self, tenant: str, flow_id: str) -> dict[str, Any]:
        return view(await self._row(tenant, flow_id))

    async def list(self, tenant: str, status: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        return [view(r, full=False) for r in await self.store.list(tenant, status, limit)]

    async def cancel(self, tenant: str, flow_id: str) -> dict[str, Any]:
        row = await self._row(tenant, flow_id)
        run = self.runs.get(flow_id)
        if run is not None:
            run.stop.set()  # its crew stops at its next LLM call or phase boundary
        self.queued.remove(flow_id)  # a queued flow never starts
        now = _now()
        if row["status"] not in ACTIVE or not await self.store.update(flow_id, status="cancelled", updated_at=now,
                                                                      finished_at=now):
            ended = (await self._row(tenant, flow_id))["status"]  # it ended first: the stop changes nothing
            raise FlowError(409, "flow_finished", f"the flow has already ended ({ended})", flow_status=ended)
        if run is not None:
            row = run.row
        row.update(status="cancelled", updated_at=now, finished_at=now)
        self.counters["cancelled"] += 1
        self.metrics.inc("raytenant_flows_finished", status="cancelled")
        await self._notifier(tenant).send_flow_update(flow_id, {"status": "cancelled", "phase": row["phase"],
                                                                "progress": row["progress"], "updated_at": now.isoformat()})
        return view(row)

    async def correct(self, tenant: str, flow_id: str, corrections: list[dict[str, str]]) -> dict[str, Any]:
        """Apply a user's corrections (or acceptances) to the flow's field mapping, and teach them
        to the tenant's learning engine. A flow's corrections take turns: each reads the mapping
        the one before it stored, so none is lost to another's write."""
        async with self.correcting.turn(flow_id):
            if corrections and "phase" in corrections[0]:  # {phase, item, corrected}: any phase's decisions
                return await self._correct_decisions(tenant, flow_id, corrections)
            return await self._correct(tenant, flow_id, corrections)

    async def _correct_decisions(self, tenant: str, flow_id: str, corrections: list[dict[str, Any]]) -> dict[str, Any]:
        """Corrections of any phase's decisions (crews/decisions.py): learned, and the stored result changed."""
        run = self.runs.get(flow_id)
        mine = run is not None and run.row["tenant"] == tenant
        row = run.row if mine else await self._row(tenant, flow_id)
        context = run.context if mine else self._context(row, row["results"])
        try:
            answer = await flow_learning.correct(self.services.learning, context, corrections)
        except flow_learning.CorrectionRefused as error:
            raise FlowError(error.status, error.code, error.message) from error
        now = _now()
        row.update(results=context.results, updated_at=now)
        await self.store.update(flow_id, while_active=False, results=context.results, updated_at=now)
        for phase in dict.fromkeys(c["phase"] for c in answer["corrected"]):
            await self._notifier(tenant).send_agent_insight(flow_id, REGISTRY[phase].role, {
                "type": "correction_applied", "phase": phase,
                "corrections": [c for c in answer["corrected"] if c["phase"] == phase]})
        return {"flow_id": flow_id, **answer}

    async def _correct(self, tenant: str, flow_id: str, corrections: list[dict[str, str]]) -> dict[str, Any]:
        run = self.runs.get(flow_id)
        row = run.row if run is not None and run.row["tenant"] == tenant else await self._row(tenant, flow_id)
        results = run.context.results if run is not None else row["results"]
        mapping = results.get("field_mapping")
        if not mapping:
            raise FlowError(409, "no_mapping", "this flow has no field mapping (yet)")
        sources = {f.name: f for f in parse_schema(mapping["source_schema"], "source_schema")}
        targets = [f.name for f in parse_schema(mapping["target_schema"], "target_schema")]
        proposed = {m["source_field"]: m["target_field"] for m in mapping["mappings"]}
        items = []
        for item in corrections:
            source, target = item["source_field"], item["target_field"]
            if source not in sources:
                raise FlowError(422, "unknown_source_field", f"{source!r} is not a field of this flow's source schema")
            if target is not None and target not in targets:
                raise FlowError(422, "unknown_target_field", f"{target!r} is not a field of this flow's target schema")
            was = proposed.get(source)
            items.append(acceptance(sources[source], target, row["name"]) if was == target and target is not None
                         else correction(sources[source], was, target, row["name"]))
        learned = await self.services.learning.call("learn", tenant, items)
        updated = apply_corrections(mapping, corrections, list(sources), targets)
        results["field_mapping"] = updated
        now = _now()
        row.update(results=results, updated_at=now)
        await self.store.update(flow_id, while_active=False, results=results, updated_at=now)
        await self._notifier(tenant).send_agent_insight(flow_id, REGISTRY["field_mapping"].role, {
            "type": "mapping_corrected", "phase": "field_mapping",
            "corrections": [{"source_field": c["source_field"], "target_field": c["target_field"],
                             "was": proposed.get(c["source_field"])} for c in corrections],
        })
        return {"flow_id": flow_id, "mapping": updated, "learned": learned}

    async def stats(self) -> dict[str, Any]:
        durations = {p: round(total / n, 3) for p, (total, n) in self.phase_seconds.items()}
        return {"running": len(self.runs), "mean_phase_seconds": durations, **self.counters}

    # -- running -----------------------------------------------------------------------------------
    async def resume(self) -> int:
        """Start every unfinished flow this runner owns that is not running here (after a restart).

        A flow that has been started `max_attempts` times without finishing (it kills its runner,
        or its store keeps failing) fails as `too_many_attempts` instead of being tried forever."""
        started = 0
        try:
            self.suspended = await self.store.suspended_tenants()
            for row in await self.store.active(self.options.kind):
                if row["id"] in self.runs or row["id"] in self.queued or row["id"] in self.unstarted \
                        or shard_for(row["tenant"], self.options.shards) != self.index:
                    continue
                if row["status"] == "suspended":  # parked until its tenant is resumed
                    if row["tenant"] not in self.suspended and await self.store.unpark(row["id"]):
                        self.queued.push({**row, "status": "queued"})  # resumed, but not queued again yet
                    continue
                if row["status"] == "queued":  # it waits again, in the order it was created
                    await self.limits.of(row["tenant"])
                    self.queued.push(row)
                    continue
                if row["attempts"] >= self.options.max_attempts:
                    await self._fail(row, {"reason": "too_many_attempts", "phase": row["phase"],
                                           "message": f"the flow was started {row['attempts']} times without finishing"})
                    continue
                self.counters["resumed"] += 1
                self._start(row)
                started += 1
        finally:
            self.resumed.set()
            self._schedule()
        return started

    async def _fail(self, row: dict[str, Any], error: dict[str, Any]) -> None:
        """End an active flow as failed: stored first, then counted and announced."""
        now = _now()
        failed = {"status": "failed", "error": error, "updated_at": now, "finished_at": now}
        if await self.store.update(row["id"], **failed):
            row.update(failed)
            self.counters["failed"] += 1
            self.metrics.inc("raytenant_flows_finished", status="failed")
            await announce_failure(self._notifier(row["tenant"]), row["id"], error)

    def _context(self, row: dict[str, Any], results: dict[str, Any]) -> FlowContext:
        return FlowContext(row["tenant"], row["id"], row["kind"], row["input"]["data"], row["input"].get("source_schema"),
                           row["input"].get("target_schema"), row["name"], self.services.learning.call_sync,
                           results=results)

    def _start(self, row: dict[str, Any]) -> None:
        run = Run(row, self._context(row, dict(row["results"] or {})))
        self.runs[row["id"]] = run
        self.queued.charge(row["tenant"], self.limits.peek(row["tenant"]).flow_weight)
        self.counters["started"] += 1
        self.metrics.set("raytenant_flows_running", len(self.runs))
        run.task = asyncio.get_running_loop().create_task(self._run(run))

    def _notifier(self, tenant: str) -> StreamNotifier:
        return StreamNotifier(self.services.hub, tenant)

    def _llm(self, run: Run):
        meter = Meter(self.services.ledger.call_sync, run.row["tenant"], flow_id=run.row["id"], stop=run.stop)

        def factory(agent: str) -> MeteredLLM:
            inner = llm_for(self.options.llm, self.options.llm_providers)
            if self.options.llm_latency and hasattr(inner, "latency"):
                inner.latency = self.options.llm_latency
            return MeteredLLM.wrap(inner, meter, agent=agent)

        return factory

    async def _run(self, run: Run) -> None:
        row, notifier = run.row, self._notifier(run.row["tenant"])
        phases = phases_of(row["kind"])
        remaining = [p for p in phases if p.name not in run.context.results]
        try:
            if not remaining:  # every phase finished before a restart: only the ending was lost
                await self._complete(run, notifier)
                return
            now = _now()
            running = {"status": "running", "attempts": row["attempts"] + 1, "started_at": row["started_at"] or now,
                       "phase": remaining[0].name, "updated_at": now}
            if row["tenant"] in self.suspended:
                await self._park(run)
                return
            if run.stop.is_set() or not await self.store.update(row["id"], **running):
                return  # cancelled before it started
            row.update(running)
            await notifier.send_flow_update(row["id"], {"status": "running", "phase": row["phase"],
                                                        "progress": row["progress"], "updated_at": now.isoformat()})
            await self._phase_started(run, remaining[0].name, notifier)
            loop = asyncio.get_running_loop()
            crew = run.crew = build_crew(run.context, self._llm(run), process=row["process"],
                              on_phase_done=lambda name, output: self._phase_done(run, name, output, loop))
            outcome = await run_crew(crew, {}, row["id"], phase=lambda: run.phase, executor=self.executor)
            if run.stop.is_set():
                return  # cancelled: cancel() stored and announced it
            missing = [p.name for p in phases if p.name not in run.context.results]
            if outcome.ok and missing:  # never complete without every phase's result: resumed from the last
                log.error("the crew of flow %s ended before %s finished; it will be resumed", row["id"], missing)
                return
            if outcome.ok:
                await self._complete(run, notifier)
                return
            if run.pause.is_set():
                await self._park(run)
                return
            if outcome.status == "cancelled":
                return
            await self._fail(row, outcome.error)
        except Exception:  # noqa: BLE001 - the store or hub failed: the sweep resumes the flow later
            log.exception("flow %s stopped; it will be resumed", row["id"])
        finally:
            self.runs.pop(row["id"], None)
            self.metrics.set("raytenant_flows_running", len(self.runs))
            self._schedule()  # its slot goes to the next queued flow

    async def _park(self, run: Run) -> None:
        """Its tenant was suspended: stored as `suspended`, to continue after its last finished phase."""
        now = _now()
        if not await self.store.update(run.row["id"], status="suspended", updated_at=now):
            return  # it ended meanwhile
        run.row.update(status="suspended", updated_at=now)
        await self._notifier(run.row["tenant"]).send_flow_update(run.row["id"], {
            "status": "suspended", "phase": run.row["phase"], "progress": run.row["progress"],
            "updated_at": now.isoformat()})

    def _phase_done(self, run: Run, name: str, output: Any, loop: asyncio.AbstractEventLoop) -> None:
        """In the crew's thread, when phase `name`'s task has finished."""
        if run.stop.is_set():
            raise FlowCancelled()
        phase = next(p for p in phases_of(run.row["kind"]) if p.name == name)
        result = run.context.output(name, phase.primary.name)
        if result is None:  # the LLM answered without running the tool: the facts are computed anyway
            result = {**phase_result(phase, run.context), "computed_by": "runner"}
        result = {**result, "answer": str(getattr(output, "raw", output))[:ANSWER_CHARS],
                  "handoffs": run.handoffs.pop(name, [])}
        run.context.results[name] = result
        asyncio.run_coroutine_threadsafe(self._phase_finished(run, name), loop).result()
        if run.pause.is_set() and len(run.context.results) < len(phases_of(run.row["kind"])):
            raise FlowCancelled()  # suspended: stop here, the finished phase is stored
        if name == "data_validation" and result.get("status") == "failed":
            raise PhaseFailed("Data validation failed", "validation_failed", quality_score=result.get("quality_score"),
                              issues=len(result.get("issues", [])))

    async def _phase_started(self, run: Run, name: str, notifier: StreamNotifier) -> None:
        run.phase = name
        run.started = time.monotonic()
        agent = f"{name}:{run.row['id']}"
        try:  # the previous agent's handoff note, if any, is this phase's to read
            messages = await self.services.mailbox.call("receive", run.row["tenant"], agent, 10, 0.0)
            if messages:
                await self.services.mailbox.call("ack_many", run.row["tenant"], agent, [m["message_id"] for m in messages])
                run.handoffs[name] = [m["content"] for m in messages]
        except ActorError as error:
            log.warning("mailbox unavailable for flow %s: %s", run.row["id"], error.message)
        prompt = run.context.prompts[name] = await flow_learning.prepare(self.services.learning, run.context, name)
        for task in run.crew.tasks if run.crew is not None else ():
            if task.name == name:  # not started yet: the crew's thread waits for this call
                task.description = next(p.task for p in phases_of(run.row["kind"]) if p.name == name) + prompt
        await notifier.send_agent_insight(run.row["id"], REGISTRY[name].role, {
            "type": "phase_started", "phase": name, "message": f"Starting {name.replace('_', ' ')}",
            "recommendations": prompt.count("\n- "),
        })

    async def _phase_finished(self, run: Run, name: str) -> None:
        row, notifier = run.row, self._notifier(run.row["tenant"])
        phases = [p.name for p in phases_of(row["kind"])]
        result = run.context.results[name]
        seconds = time.monotonic() - run.started
        total, n = self.phase_seconds.get(name, (0.0, 0))
        self.phase_seconds[name] = (total + seconds, n + 1)
        self.metrics.observe("raytenant_flow_phase_seconds", seconds, phase=name)
        now = _now()
        progress = round(100 * sum(1 for p in phases if p in run.context.results) / len(phases))
        finished = {"results": run.context.results, "phase": name, "progress": progress, "updated_at": now}
        if not await self.store.update(row["id"], **finished):
            run.stop.set()  # it was cancelled meanwhile: the crew stops here
            raise FlowCancelled()
        row.update(finished)
        await notifier.send_agent_insight(row["id"], REGISTRY[name].role, {
            "type": "phase_completed", "phase": name, "results_summary": result.get("summary"),
        })
        await notifier.send_flow_update(row["id"], {"status": "running", "phase": name, "progress": progress,
                                                    "updated_at": now.isoformat()})
        await flow_learning.learn_successes(self.services.learning, run.context, name)
        following = phases[phases.index(name) + 1] if phases.index(name) + 1 < len(phases) else None
        if following is None or (name == "data_validation" and result.get("status") == "failed"):
            return
        try:
            await self.services.mailbox.call("send", row["tenant"], [{
                "receiver": f"{following}:{row['id']}", "sender": f"{name}:{row['id']}", "type": "notification",
                "content": {"flow_id": row["id"], "phase": name, "summary": result.get("summary")},
                "correlation_id": row["id"],
            }])
        except ActorError as error:
            log.warning("handoff of flow %s not sent: %s", row["id"], error.message)
        if run.pause.is_set():
            return  # suspended: the next phase starts, and reads its handoff, when the tenant resumes
        await self._phase_started(run, following, notifier)

    async def _complete(self, run: Run, notifier: StreamNotifier) -> None:
        row, now = run.row, _now()
        completed = {"status": "completed", "progress": 100, "updated_at": now, "finished_at": now}
        if not await self.store.update(row["id"], **completed):
            return  # it was cancelled meanwhile
        row.update(completed)
        self.counters["completed"] += 1
        self.metrics.inc("raytenant_flows_finished", status="completed")
        await notifier.send_flow_update(row["id"], {"status": "completed", "phase": row["phase"], "progress": 100,
                                                    "updated_at": now.isoformat()})
        summaries = {name: r.get("summary") for name, r in run.context.results.items()}
        await notifier.send_completion_notification(row["id"], {"kind": row["kind"], "phases": summaries})

    async def _row(self, tenant: str, flow_id: str) -> dict[str, Any]:
        row = await self.store.get(tenant, flow_id)
        if row is None:
            raise FlowError(404, "flow_not_found", "no such flow for this tenant")
        return row


def apply_corrections(mapping: dict[str, Any], corrections: list[dict[str, str]], sources: list[str],
                      targets: list[str]) -> dict[str, Any]:
    """The mapping with the user's choices: one target per source and one source per target, so a
    target taken from another source leaves that source unmapped; a null target unmaps its source."""
    by_source = {m["source_field"]: m for m in mapping["mappings"]}
    none = set(mapping.get("no_counterpart") or ())
    for item in corrections:
        source, target = item["source_field"], item["target_field"]
        if target is None:  # the user says this field has no counterpart
            by_source.pop(source, None)
            none.add(source)
            continue
        none.discard(source)
        for other, entry in list(by_source.items()):
            if entry["target_field"] == target and other != source:
                del by_source[other]
        by_source[source] = {"source_field": source, "target_field": target, "confidence": 1.0, "method": "user"}
    mapped = [by_source[s] for s in sources if s in by_source]
    used = {m["target_field"] for m in mapped}
    return {**mapping, "mappings": mapped, "unmapped_source_fields": [s for s in sources if s not in by_source],
            "no_counterpart": [s for s in sources if s in none],
            "unmapped_target_fields": [t for t in targets if t not in used],
            "match_rate": round(len(mapped) / len(sources), 4) if sources else 0.0}
