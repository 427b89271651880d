"""A typed Python client for raytenant's HTTP and WebSocket API, sync (`Client`) and async
(`AsyncClient`), over httpx, aiohttp and websockets. It imports nothing of the server: a tenant's
application installs the package and uses only this module.

    async with AsyncClient("http://127.0.0.1:30000", token) as rt:
        await rt.events.publish({"type": "flow_update", "flow_id": "f-1", "data": {"progress": 10}})
        async for event in rt.stream(flow_id="f-1"):
            ...

Each area (tokens, events, costs, llm, learning, mappings, agents, flows, admin) is written once
as calls that name a method, path, query and body; `Client` sends them with httpx.Client and
`AsyncClient` with aiohttp (httpx's async pool spends over ten times aiohttp's CPU per request
once dozens are in flight, encode/httpx#3215). An error answer raises `RaytenantError` with the
documented code; no answer at all (refused connection, timeout) raises its `Unreachable`.
`stream` resumes after a dropped connection from the last seq it delivered, so the caller sees
every event once, in order.
"""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Generic, Iterator, Literal, TypeVar
from urllib.parse import quote, urlencode

import aiohttp
import httpx

Json = dict[str, Any]
R = TypeVar("R")
# Close codes after which reconnecting cannot help: bad request, bad or revoked token, suspended.
FINAL_CLOSES = {4000: "invalid_parameter", 4001: "unauthorized", 4003: "tenant_suspended"}


class RaytenantError(Exception):
    """An error answer: its HTTP status (or WebSocket close code), code, message and details."""

    def __init__(self, status: int, code: str, message: str, details: Json | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.details = status, code, message, details or {}


@dataclass(frozen=True)
class Call:
    """One request: what an area method asks the transport to send."""

    method: str
    path: str
    body: Any = None
    params: Json = field(default_factory=dict)
    operator: bool = False  # sent with the operator token
    headers: dict[str, str] = field(default_factory=dict)
    raw: bool = False  # the answer's bytes, not JSON (the tenant export)
    content: bytes | None = None  # a body sent as it is, not as JSON (the tenant import)


def _q(value: str, safe: str = "") -> str:
    """A path segment as sent: percent-encoded, so `#`, `?` or `/` in an id stay in it. `.` and
    `..` cannot be sent (every URL library folds them into the path), so they are refused here."""
    if value in (".", ".."):
        raise ValueError(f"{value!r} cannot be a path segment")
    return quote(value, safe=safe)


def _params(**values: Any) -> Json:
    return {k: v for k, v in values.items() if v is not None}


def _fields(**values: Any) -> Json:
    """A body without the fields left unset (the server's defaults apply)."""
    return {k: v for k, v in values.items() if v is not None}


class Unreachable(RaytenantError):
    """No answer came: the connection was refused or dropped (`unreachable`), or the timeout
    passed (`timeout`). Status 0: the request may or may not have been carried out."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(0, code, message)


def _encoded(call: Call) -> tuple[bytes | None, dict[str, str]]:
    """The body's bytes and content type: strict JSON (no NaN), or the call's own bytes."""
    if call.content is not None:
        return call.content, {}
    if call.body is None:
        return None, {}
    return json.dumps(call.body, allow_nan=False, separators=(",", ":")).encode(), {"Content-Type": "application/json"}


def _answer(status: int, content: bytes, raw: bool) -> Any:
    if status >= 400:
        try:
            error = json.loads(content)["error"]
            code, message = error.pop("code"), error.pop("message")
        except (ValueError, KeyError, TypeError, AttributeError):
            code, message, error = "http_error", content[:500].decode(errors="replace"), {}
        raise RaytenantError(status, code, message, error)
    if raw:
        return content
    return None if status == 204 or not content else json.loads(content)


class _Area(Generic[R]):
    def __init__(self, send: Callable[[Call], R]) -> None:
        self._send = send


class Tokens(_Area[R]):
    def mint(self, tenant: str, *, user: str | None = None, engagement: str | None = None,
             scopes: list[str] | None = None, ttl_seconds: int | None = None) -> R:
        """A tenant token (the operator token is needed)."""
        return self._send(Call("POST", "/v1/admin/tokens", _fields(tenant=tenant, user=user, engagement=engagement,
                                                                     scopes=scopes, ttl_seconds=ttl_seconds),
                               operator=True))


class Events(_Area[R]):
    def publish(self, events: Json | list[Json]) -> R:
        """One event or a list; answers {"seqs": [...]} once committed."""
        return self._send(Call("POST", "/v1/events", {"events": events} if isinstance(events, list) else events))

    def replay(self, after: int = 0, *, limit: int = 100, flow_id: str | None = None) -> R:
        return self._send(Call("GET", "/v1/events", params=_params(after=after, limit=limit, flow_id=flow_id)))

    def connections(self) -> R:
        return self._send(Call("GET", "/v1/connections"))


class Costs(_Area[R]):
    def record(self, records: Json | list[Json]) -> R:
        """Usage of calls already made: one record, or a list (answers with total_cost)."""
        return self._send(Call("POST", "/v1/costs/usage", {"records": records} if isinstance(records, list)
                               else records))

    def reserve(self, model: str, input_tokens: int, max_output_tokens: int, *, ttl_seconds: float | None = None,
                agent: str | None = None) -> R:
        return self._send(Call("POST", "/v1/costs/reservations", _fields(
            model=model, input_tokens=input_tokens, max_output_tokens=max_output_tokens, ttl_seconds=ttl_seconds,
            agent=agent)))

    def settle(self, reservation_id: str, input_tokens: int, output_tokens: int, *, cached_tokens: int = 0,
               agent: str | None = None, task: str | None = None, flow_id: str | None = None,
               idempotency_key: str | None = None) -> R:
        return self._send(Call("POST", f"/v1/costs/reservations/{_q(reservation_id)}/settle", _fields(
            input_tokens=input_tokens, output_tokens=output_tokens, cached_tokens=cached_tokens, agent=agent,
            task=task, flow_id=flow_id, idempotency_key=idempotency_key)))

    def release(self, reservation_id: str) -> R:
        return self._send(Call("DELETE", f"/v1/costs/reservations/{_q(reservation_id)}"))

    def set_budget(self, monthly_budget: float, alert_threshold: float = 0.8) -> R:
        return self._send(Call("PUT", "/v1/costs/budget", {"monthly_budget": monthly_budget,
                                                           "alert_threshold": alert_threshold}))

    def budget(self) -> R:
        return self._send(Call("GET", "/v1/costs/budget"))

    def set_level(self, scope: Literal["tenant", "engagement", "user", "agent"], key: str, *,
                  amount: float | None = None, period: Literal["month", "day"] = "month",
                  mode: Literal["hard", "soft"] = "hard", thresholds: list[float] | None = None,
                  tpm: int | None = None, rpm: int | None = None) -> R:
        return self._send(Call("PUT", f"/v1/costs/budgets/{_q(scope)}/{_q(key)}", _fields(
            amount=amount, period=period, mode=mode, thresholds=thresholds, tpm=tpm, rpm=rpm)))

    def level(self, scope: str, key: str) -> R:
        return self._send(Call("GET", f"/v1/costs/budgets/{_q(scope)}/{_q(key)}"))

    def levels(self, scope: str | None = None) -> R:
        return self._send(Call("GET", "/v1/costs/budgets", params=_params(scope=scope)))

    def delete_level(self, scope: str, key: str) -> R:
        return self._send(Call("DELETE", f"/v1/costs/budgets/{_q(scope)}/{_q(key)}"))

    def summary(self, start: str | None = None, end: str | None = None) -> R:
        return self._send(Call("GET", "/v1/costs/summary", params=_params(start=start, end=end)))

    def recommendations(self) -> R:
        return self._send(Call("GET", "/v1/costs/recommendations"))

    def select_model(self, task_type: str = "medium", *, quality_requirement: float | None = None,
                     cost_constraint: float | None = None) -> R:
        return self._send(Call("POST", "/v1/costs/select-model", _fields(
            task_type=task_type, quality_requirement=quality_requirement, cost_constraint=cost_constraint)))

    def estimate(self, model: str, input_tokens: int | None = None, output_tokens: int | None = None,
                 cached_tokens: int = 0, *, tokens: int | None = None) -> R:
        """The cost of a call: its input and output tokens, or (the original's form) a `tokens`
        total, split 2:1 input to output."""
        if tokens is not None:
            return self._send(Call("POST", "/v1/costs/estimate", {"model": model, "tokens": tokens}))
        return self._send(Call("POST", "/v1/costs/estimate", {"model": model, "input_tokens": input_tokens,
                                                              "output_tokens": output_tokens,
                                                              "cached_tokens": cached_tokens}))

    def prices(self, model: str = "", *, limit: int = 50) -> R:
        return self._send(Call("GET", "/v1/costs/prices", params=_params(model=model or None, limit=limit)))


class Llm(_Area[R]):
    def chat(self, model: str, messages: list[Json], *, max_tokens: int | None = None,
             idempotency_key: str | None = None, agent: str | None = None, flow_id: str | None = None,
             **options: Any) -> R:
        """A chat completion through the gateway (the tenant's budgets bound it). For streaming, point
        the openai client library at `<url>/v1/llm` with the tenant token as its API key."""
        headers = _params(**{"Idempotency-Key": idempotency_key, "X-Raytenant-Agent": agent,
                             "X-Raytenant-Flow": flow_id})
        body = {"model": model, "messages": messages, **_fields(max_tokens=max_tokens), **options}
        return self._send(Call("POST", "/v1/llm/chat/completions", body, headers=headers))


class Learning(_Area[R]):
    def correct(self, original: Any, corrected: Any, context: Json) -> R:
        return self._send(Call("POST", "/v1/learning/corrections",
                               {"original": original, "corrected": corrected, "context": context}))

    def corrections(self, items: list[Json]) -> R:
        return self._send(Call("POST", "/v1/learning/corrections", {"corrections": items}))

    def success(self, result: Any, context: Json) -> R:
        return self._send(Call("POST", "/v1/learning/successes", {"result": result, "context": context}))

    def successes(self, items: list[Json]) -> R:
        return self._send(Call("POST", "/v1/learning/successes", {"successes": items}))

    def recommend(self, context: Json, *, threshold: float | None = None, limit: int | None = None) -> R:
        return self._send(Call("POST", "/v1/learning/recommendations",
                               {"context": context, **_fields(threshold=threshold, limit=limit)}))

    def feedback(self, pattern_id: str, accepted: bool) -> R:
        return self._send(Call("POST", "/v1/learning/feedback", {"pattern_id": pattern_id, "accepted": accepted}))

    def stats(self) -> R:
        return self._send(Call("GET", "/v1/learning/stats"))


class Mappings(_Area[R]):
    def map(self, source_schema: Any, target_schema: Any, *, source_name: str | None = None) -> R:
        return self._send(Call("POST", "/v1/mappings", {"source_schema": source_schema, "target_schema": target_schema,
                                                        **_fields(source_name=source_name)}))

    def correct(self, source_field: str, target_field: str | None, *, proposed_target: str | None = None,
                source_type: str | None = None, source_name: str | None = None) -> R:
        """`target_field=None` teaches that the source field has no counterpart."""
        return self._send(Call("POST", "/v1/mappings/corrections", {
            "source_field": source_field, "target_field": target_field,
            **_fields(proposed_target=proposed_target, source_type=source_type, source_name=source_name)}))


class Agents(_Area[R]):
    def send(self, agent: str, sender: str, content: Any, *, type: str = "notification",
             correlation_id: str | None = None) -> R:
        return self._send(Call("POST", f"/v1/agents/{_q(agent)}/messages", {
            "sender": sender, "type": type, "content": content, **_fields(correlation_id=correlation_id)}))

    def send_many(self, agent: str, messages: list[Json]) -> R:
        return self._send(Call("POST", f"/v1/agents/{_q(agent)}/messages", {"messages": messages}))

    def receive(self, agent: str, *, max: int = 10, wait: float = 0.0, visibility: float = 30.0) -> R:
        return self._send(Call("GET", f"/v1/agents/{_q(agent)}/messages",
                               params={"max": max, "wait": wait, "visibility": visibility}))

    def ack(self, agent: str, message_id: str) -> R:
        return self._send(Call("POST", f"/v1/agents/{_q(agent)}/messages/{_q(message_id)}/ack"))

    def ack_many(self, agent: str, message_ids: list[str]) -> R:
        return self._send(Call("POST", f"/v1/agents/{_q(agent)}/messages/ack", {"message_ids": message_ids}))

    def set_topics(self, agent: str, topics: list[str]) -> R:
        return self._send(Call("PUT", f"/v1/agents/{_q(agent)}/topics", {"topics": topics}))

    def topics(self, agent: str) -> R:
        return self._send(Call("GET", f"/v1/agents/{_q(agent)}/topics"))

    def broadcast(self, topic: str, sender: str, content: Any, *, type: str = "notification") -> R:
        return self._send(Call("POST", f"/v1/topics/{_q(topic)}/messages",
                               {"sender": sender, "type": type, "content": content}))

    def request(self, agent: str, receiver: str, content: Any, *, timeout: float = 10.0) -> R:
        """`agent` asks `receiver` and waits up to `timeout` seconds for its response."""
        return self._send(Call("POST", f"/v1/agents/{_q(agent)}/requests",
                               {"receiver": receiver, "content": content, "timeout": timeout}))

    def dead_letters(self, agent: str, *, limit: int = 100) -> R:
        return self._send(Call("GET", f"/v1/agents/{_q(agent)}/dead-letters", params={"limit": limit}))

    def depth(self, agent: str) -> R:
        return self._send(Call("GET", f"/v1/agents/{_q(agent)}"))


class Flows(_Area[R]):
    def create(self, name: str, data: Any, *, kind: Literal["discovery", "optimization"] = "discovery",
               process: Literal["sequential", "hierarchical"] = "sequential", source_schema: Any = None,
               target_schema: Any = None) -> R:
        return self._send(Call("POST", "/v1/flows", {"name": name, "data": data, "kind": kind, "process": process,
                                                     **_fields(source_schema=source_schema,
                                                               target_schema=target_schema)}))

    def list(self, *, status: str | None = None, limit: int = 50) -> R:
        return self._send(Call("GET", "/v1/flows", params=_params(status=status, limit=limit)))

    def get(self, flow_id: str) -> R:
        return self._send(Call("GET", f"/v1/flows/{_q(flow_id)}"))

    def cancel(self, flow_id: str) -> R:
        return self._send(Call("POST", f"/v1/flows/{_q(flow_id)}/cancel"))

    def correct(self, flow_id: str, corrections: list[Json]) -> R:
        return self._send(Call("POST", f"/v1/flows/{_q(flow_id)}/corrections", {"corrections": corrections}))


class Admin(_Area[R]):
    """The operator's routes (the client needs `operator_token`)."""

    def create_tenant(self, tenant: str) -> R:
        return self._send(Call("POST", "/v1/admin/tenants", {"tenant": tenant}, operator=True))

    def tenants(self, *, after: str = "", limit: int = 100) -> R:
        return self._send(Call("GET", "/v1/admin/tenants", params=_params(after=after or None, limit=limit),
                               operator=True))

    def tenant(self, tenant: str) -> R:
        return self._send(Call("GET", f"/v1/admin/tenants/{_q(tenant)}", operator=True))

    def suspend(self, tenant: str) -> R:
        return self._send(Call("POST", f"/v1/admin/tenants/{_q(tenant)}/suspend", operator=True))

    def resume(self, tenant: str) -> R:
        return self._send(Call("POST", f"/v1/admin/tenants/{_q(tenant)}/resume", operator=True))

    def delete(self, tenant: str) -> R:
        return self._send(Call("DELETE", f"/v1/admin/tenants/{_q(tenant)}", operator=True))

    def export(self, tenant: str) -> R:
        """The tenant's data as JSON lines (bytes)."""
        return self._send(Call("GET", f"/v1/admin/tenants/{_q(tenant)}/export", operator=True, raw=True))

    def import_tenant(self, lines: bytes) -> R:
        """A tenant's export (JSON lines) into a service that does not hold it: all of it or nothing."""
        return self._send(Call("POST", "/v1/admin/tenants/import", operator=True, content=lines,
                               headers={"Content-Type": "application/x-ndjson"}))

    def set_cap(self, tenant: str, monthly_cap: float | None) -> R:
        return self._send(Call("PUT", f"/v1/admin/tenants/{_q(tenant)}/budget", {"monthly_cap": monthly_cap},
                               operator=True))

    def month(self, tenant: str) -> R:
        return self._send(Call("GET", f"/v1/admin/tenants/{_q(tenant)}/budget", operator=True))

    def set_price(self, tenant: str, model: str, input_per_token: float, output_per_token: float,
                  cached_per_token: float | None = None) -> R:
        return self._send(Call("PUT", f"/v1/admin/tenants/{_q(tenant)}/prices/{_q(model, '/')}", _fields(
            input_per_token=input_per_token, output_per_token=output_per_token, cached_per_token=cached_per_token),
            operator=True))

    def delete_price(self, tenant: str, model: str) -> R:
        return self._send(Call("DELETE", f"/v1/admin/tenants/{_q(tenant)}/prices/{_q(model, '/')}", operator=True))

    def set_limits(self, tenant: str, overrides: Json) -> R:
        return self._send(Call("PUT", f"/v1/admin/tenants/{_q(tenant)}/limits", overrides, operator=True))

    def limits(self, tenant: str) -> R:
        return self._send(Call("GET", f"/v1/admin/tenants/{_q(tenant)}/limits", operator=True))

    def revoke(self, tenant: str, *, jti: str | None = None, issued_before: str | float | None = None) -> R:
        return self._send(Call("POST", f"/v1/admin/tenants/{_q(tenant)}/revocations",
                               _fields(jti=jti, issued_before=issued_before), operator=True))

    def revocations(self, tenant: str) -> R:
        return self._send(Call("GET", f"/v1/admin/tenants/{_q(tenant)}/revocations", operator=True))

    def keys(self) -> R:
        """The signing keys' ids and states (never a secret)."""
        return self._send(Call("GET", "/v1/admin/keys", operator=True))

    def rotate_keys(self, retire_after_seconds: int | None = None) -> R:
        return self._send(Call("POST", "/v1/admin/keys/rotate", _fields(retire_after_seconds=retire_after_seconds),
                               operator=True))

    def audit(self, *, after: int = 0, limit: int = 100, tenant: str | None = None) -> R:
        return self._send(Call("GET", "/v1/admin/audit", params=_params(after=after, limit=limit, tenant=tenant),
                               operator=True))


class _Base(Generic[R]):
    """The areas, each sending its calls through `send` (the sync or the async transport)."""

    def __init__(self, url: str, token: str | None, operator_token: str | None, send: Callable[[Call], R]) -> None:
        self.url, self.token, self.operator_token = url.rstrip("/"), token, operator_token
        self.tokens: Tokens[R] = Tokens(send)
        self.events: Events[R] = Events(send)
        self.costs: Costs[R] = Costs(send)
        self.llm: Llm[R] = Llm(send)
        self.learning: Learning[R] = Learning(send)
        self.mappings: Mappings[R] = Mappings(send)
        self.agents: Agents[R] = Agents(send)
        self.flows: Flows[R] = Flows(send)
        self.admin: Admin[R] = Admin(send)

    def _headers(self, call: Call) -> dict[str, str]:
        token = self.operator_token if call.operator else self.token
        if token is None:
            raise ValueError("this call needs the operator token" if call.operator else "this call needs a token")
        return {"Authorization": f"Bearer {token}", **call.headers}

    def _stream_url(self, flow_id: str | None, last_seq: int | None) -> str:
        query = urlencode(_params(flow_id=flow_id, last_seq=last_seq))
        return self.url.replace("http", "ws", 1) + "/v1/ws" + (f"?{query}" if query else "")


class _Resume:
    """Where a stream is: the seq of the last event delivered, to reconnect from."""

    def __init__(self, last_seq: int | None, connected: Callable[[Json], None] | None,
                 max_retries: int | None) -> None:
        self.last_seq, self.connected, self.max_retries = last_seq, connected, max_retries
        self.failures = 0

    def lost(self, error: Exception | None) -> None:
        """A connection ended (`error`: how): raise when reconnecting cannot help or the retries are spent."""
        received = getattr(error, "rcvd", None)
        if received is not None:
            _final(received.code, received.reason)
        self.failures += 1
        if self.max_retries is not None and self.failures > self.max_retries:
            raise RaytenantError(503, "stream_unavailable", f"no connection after {self.max_retries} retries")

    def take(self, frame: str | bytes) -> Json | None:
        """The event in `frame`, once; control messages move the position but are not events."""
        message = json.loads(frame)
        kind = message.get("type")
        if kind == "connection_established":
            if self.last_seq is None:
                self.last_seq = message.get("last_seq", 0)
            if self.connected is not None:
                self.connected(message)
        elif kind == "resume_failed":
            raise RaytenantError(410, "events_expired", "events after the last seq seen are no longer kept", message)
        elif kind == "error":
            raise RaytenantError(400, message.get("code", "error"), message.get("message", ""), message)
        elif isinstance(message.get("seq"), int) and kind not in ("pong",):
            if self.last_seq is not None and message["seq"] <= self.last_seq:
                return None  # already delivered before the reconnect
            self.last_seq = message["seq"]
            return message
        return None


def _final(code: int | None, reason: str) -> None:
    if code in FINAL_CLOSES:
        raise RaytenantError(code, FINAL_CLOSES[code], reason or "the server closed the stream")


def async_pool(*, connections: int | None = 100) -> Any:
    """An aiohttp session of at most `connections` connections (None: no limit) that many
    AsyncClients can share, one per tenant token say: `AsyncClient(url, token, http=pool)`;
    `await pool.close()` at the end. Made inside the running event loop."""
    # No cookies shared between the tenants' clients; no proxy or .netrc lookups from the
    # environment (aiohttp reads .netrc in a thread for every request when trust_env is on).
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections or 0),
                                 cookie_jar=aiohttp.DummyCookieJar())


class AsyncClient(_Base[Awaitable[Any]]):
    """`async with AsyncClient(url, token) as rt: await rt.costs.budget()`."""

    def __init__(self, url: str, token: str | None = None, *, operator_token: str | None = None,
                 timeout: float = 60.0, http: Any = None) -> None:
        """`timeout`: seconds for a whole request, connect to last byte. `http`: an
        aiohttp.ClientSession to share (`async_pool`); by default the client opens its own at the
        first call and closes it on exit."""
        super().__init__(url, token, operator_token, self._send)
        self.timeout, self.http, self._owns = timeout, http, http is None

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections, if they are the client's own (not a shared `async_pool`)."""
        if self._owns and self.http is not None:
            await self.http.close()
            self.http = None

    async def _send(self, call: Call) -> Any:
        if self.http is None:
            self.http = async_pool()
        content, headers = _encoded(call)
        url = self.url + call.path + (f"?{urlencode(call.params)}" if call.params else "")
        try:
            async with self.http.request(call.method, url, data=content, headers={**headers, **self._headers(call)},
                                         allow_redirects=False,
                                         timeout=aiohttp.ClientTimeout(total=self.timeout)) as response:
                return _answer(response.status, await response.read(), call.raw)
        except asyncio.TimeoutError as error:
            raise Unreachable("timeout", f"no answer within {self.timeout} s") from error
        except aiohttp.ClientConnectionError as error:
            raise Unreachable("unreachable", str(error) or type(error).__name__) from error

    async def stream(self, *, flow_id: str | None = None, last_seq: int | None = None,
                     retry_seconds: float = 0.5, max_retries: int | None = None,
                     connected: Callable[[Json], None] | None = None, **options: Any) -> AsyncIterator[Json]:
        """Every event of the tenant (with `flow_id`: that flow's, `"*"` all flows') after
        `last_seq` (default: from now), resuming after a dropped connection. `connected` is called
        with each connection's `connection_established` message; `options` go to
        `websockets.connect` (e.g. `compression=None`, `max_queue=None`)."""
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed

        position = _Resume(last_seq, connected, max_retries)
        while True:
            error: Exception | None = None
            try:
                async with connect(self._stream_url(flow_id, position.last_seq),
                                   additional_headers=self._headers(Call("GET", "/v1/ws")), **options) as socket:
                    position.failures = 0
                    async for frame in socket:
                        event = position.take(frame)
                        if event is not None:
                            yield event
                    _final(socket.close_code, socket.close_reason or "")
            except (ConnectionClosed, OSError) as closed:
                error = closed
            position.lost(error)
            await asyncio.sleep(retry_seconds)


class Client(_Base[Any]):
    """`with Client(url, token) as rt: rt.costs.budget()`."""

    def __init__(self, url: str, token: str | None = None, *, operator_token: str | None = None,
                 timeout: float = 60.0, http: httpx.Client | None = None) -> None:
        super().__init__(url, token, operator_token, self._send)
        self.http = http or httpx.Client(base_url=self.url, timeout=timeout)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.http.close()

    def _send(self, call: Call) -> Any:
        content, headers = _encoded(call)
        try:
            response = self.http.request(call.method, call.path, content=content, params=call.params or None,
                                         headers={**headers, **self._headers(call)})
        except httpx.TimeoutException as error:
            raise Unreachable("timeout", str(error) or "no answer in time") from error
        except (httpx.NetworkError, httpx.RemoteProtocolError) as error:
            raise Unreachable("unreachable", str(error) or type(error).__name__) from error
        return _answer(response.status_code, response.content, call.raw)

    def stream(self, *, flow_id: str | None = None, last_seq: int | None = None, retry_seconds: float = 0.5,
               max_retries: int | None = None, connected: Callable[[Json], None] | None = None,
               **options: Any) -> Iterator[Json]:
        """`AsyncClient.stream`, blocking."""
        from websockets.exceptions import ConnectionClosed
        from websockets.sync.client import connect

        position = _Resume(last_seq, connected, max_retries)
        while True:
            error: Exception | None = None
            try:
                with connect(self._stream_url(flow_id, position.last_seq),
                             additional_headers=self._headers(Call("GET", "/v1/ws")), **options) as socket:
                    position.failures = 0
                    for frame in socket:
                        event = position.take(frame)
                        if event is not None:
                            yield event
                    _final(socket.close_code, socket.close_reason or "")
            except (ConnectionClosed, OSError) as closed:
                error = closed
            position.lost(error)
            time.sleep(retry_seconds)
