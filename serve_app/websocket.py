"""The WebSocket protocol at /v1/ws (docs/websocket-protocol.md is the reference)."""
from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from serve_app.auth import SUBPROTOCOL, AuthError, Claims, socket_token
from serve_app.rate_limits import refuse_socket
from serve_app.runtime import Runtime
from serve_app.streams import ALL_FLOWS, CLOSE_SUSPENDED, CLOSE_UNAUTHORIZED, Connection
from storage import strict_json

log = logging.getLogger("raytenant.ws")

CLOSE_TOO_BIG = 1009
CLOSE_TRY_AGAIN = 1013
CLOSE_BAD_REQUEST = 4000


def valid_flow_id(flow_id: Any) -> bool:
    return isinstance(flow_id, str) and 0 < len(flow_id) <= 128 and strict_json.is_clean_text(flow_id)


def _int_arg(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


async def websocket_endpoint(websocket: WebSocket) -> None:
    runtime: Runtime = websocket.app.state.runtime
    token, by_protocol = socket_token(websocket.scope)
    await websocket.accept(subprotocol=SUBPROTOCOL if by_protocol else None)
    try:
        claims = runtime.tokens.verify(token)
    except AuthError as error:
        if token and runtime.tokens.is_operator(token):
            error = AuthError("operator_token", "the operator token cannot open streams; use a tenant token")
        log.warning("websocket refused: %s", error.code)
        await websocket.close(CLOSE_SUSPENDED if error.code == "tenant_suspended" else CLOSE_UNAUTHORIZED,
                              error.message[:120])
        return
    if not claims.allows("events:read"):
        await websocket.close(CLOSE_UNAUTHORIZED, "the token lacks the events:read scope")
        return

    flow_id = websocket.query_params.get("flow_id")
    last_seq_arg = websocket.query_params.get("last_seq")
    last_seq = _int_arg(last_seq_arg) if last_seq_arg is not None else None
    if (flow_id is not None and not valid_flow_id(flow_id)) or (last_seq_arg is not None and last_seq is None):
        await websocket.close(CLOSE_BAD_REQUEST, "invalid flow_id or last_seq")
        return

    slot = await runtime.quotas.open_socket(claims.tenant)
    if not slot["admitted"]:
        await refuse_socket(runtime, websocket, slot)
        return
    try:
        await _serve(websocket, runtime, claims, flow_id, last_seq, slot["subscriptions_per_socket"])
    finally:
        await runtime.quotas.close_socket(claims.tenant)


async def _serve(websocket: WebSocket, runtime: Runtime, claims: Claims, flow_id: str | None,
                 last_seq: int | None, max_subscriptions: int | None) -> None:
    tenant = claims.tenant
    conn = Connection(tenant, claims.user, websocket.send_text, websocket.close, runtime.settings.send_queue_size,
                      max_subscriptions=max_subscriptions, iat=claims.iat, jti=claims.jti, exp=claims.exp,
                      kid=claims.kid)
    if flow_id:
        conn.flows.add(flow_id)
    router = runtime.router
    try:
        head = await router.connect(conn)
    except Exception:
        log.exception("could not attach a socket for tenant %s", tenant)
        await websocket.close(CLOSE_TRY_AGAIN, "event stream unavailable, retry")
        return
    if runtime.revocations.revoked(tenant, claims.iat, claims.jti):  # revoked while it was being attached
        router.disconnect(conn)
        await websocket.close(CLOSE_UNAUTHORIZED, "the token was revoked")
        return
    if runtime.revocations.suspended(tenant):  # suspended while it was being attached
        router.disconnect(conn)
        await websocket.close(CLOSE_SUSPENDED, "the tenant is suspended")
        return
    conn.start_writer()
    conn.send_json({"type": "connection_established", "connection_id": conn.id, "tenant": tenant, "last_seq": head})
    if flow_id:
        conn.send_json({"type": "subscription_confirmed", "flow_id": flow_id})
    tasks: set[asyncio.Task] = set()
    if last_seq is not None:
        conn.resuming = True  # hold live events until the replay is out
        tasks.add(asyncio.create_task(router.resume(conn, last_seq)))
    try:
        with contextlib.suppress(WebSocketDisconnect):  # the client left: clean up below
            await _read_loop(websocket, runtime, conn, tasks)
    finally:
        for task in tasks:
            task.cancel()
        router.disconnect(conn)


async def _read_loop(websocket: WebSocket, runtime: Runtime, conn: Connection, tasks: set[asyncio.Task]) -> None:
    limit = runtime.settings.max_frame_bytes
    while not conn.closed:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        raw = message.get("text")
        size = len(raw.encode()) if raw is not None else len(message.get("bytes") or b"")
        if size > limit:
            conn.closed = True
            await websocket.close(CLOSE_TOO_BIG, f"frame larger than {limit} bytes")
            return
        try:
            payload = strict_json.loads(raw if raw is not None else (message.get("bytes") or b""))
        except strict_json.StrictJSONError as error:
            conn.send_json({"type": "error", "code": error.code, "message": f"messages must be strict JSON objects: {error.message}"})
            continue
        if not isinstance(payload, dict):
            conn.send_json({"type": "error", "code": "malformed_json", "message": "messages must be JSON objects"})
            continue
        _handle(runtime, conn, payload, tasks)


def _handle(runtime: Runtime, conn: Connection, message: dict[str, Any], tasks: set[asyncio.Task]) -> None:
    kind = message.get("type")
    if kind in ("subscribe_flow", "unsubscribe_flow"):
        flow_id = message.get("flow_id")
        if not (valid_flow_id(flow_id) or flow_id == ALL_FLOWS):
            conn.send_json({"type": "error", "code": "invalid_flow_id", "message": "flow_id must be a string of 1-128 characters"})
        elif kind == "subscribe_flow" and flow_id not in conn.flows and conn.max_subscriptions is not None \
                and len(conn.flows) >= conn.max_subscriptions:
            runtime.metrics.inc("raytenant_limit_refusals", limit="subscriptions_per_socket")
            conn.send_json({"type": "error", "code": "quota_exceeded", "limit": "subscriptions_per_socket",
                            "message": f"this socket already holds {len(conn.flows)} subscriptions of "
                                       f"{conn.max_subscriptions}; unsubscribe first"})
        elif kind == "subscribe_flow":
            conn.flows.add(flow_id)
            conn.send_json({"type": "subscription_confirmed", "flow_id": flow_id})
        else:
            conn.flows.discard(flow_id)
            conn.send_json({"type": "unsubscription_confirmed", "flow_id": flow_id})
    elif kind == "ping":
        conn.send_json({"type": "pong", "last_seq": conn.last_sent})
    elif kind == "resume":
        last_seq = _int_arg(message.get("last_seq"))
        if last_seq is None:
            conn.send_json({"type": "error", "code": "invalid_last_seq", "message": "last_seq must be a non-negative integer"})
        elif conn.resuming:
            conn.send_json({"type": "error", "code": "resume_in_progress", "message": "a resume is already running"})
        else:
            conn.resuming = True
            task = asyncio.create_task(runtime.router.resume(conn, last_seq))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    else:
        conn.send_json({"type": "error", "code": "unknown_type", "message": f"Unknown message type: {kind}"})
