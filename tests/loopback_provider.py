"""A loopback OpenAI-compatible provider: the stand-in for a paid LLM API, which cannot run here.

It speaks the real protocol over real HTTP (`POST /v1/chat/completions`, plain JSON or SSE with a
final usage chunk when `stream_options.include_usage` is set), checks the bearer key, honours
`max_tokens`, reports usage, and answers like the OfflineLLM (crewai's ReAct steps calling the
agents' real tools), so a whole discovery flow can run on it. Tests inject failures: the next n
calls answer 429 (with Retry-After) or 500, or every answer waits `delay` seconds. Every request
it served is kept in `requests`, so a test can check what the gateway forwarded.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

API_KEY = "sk-loopback-test-key"


def count_tokens(text: str) -> int:
    """The provider's tokenizer: one token per word or punctuation run (never more than bytes)."""
    return max(1, len(text.split())) if text else 0


@dataclass
class LoopbackProvider:
    key: str = API_KEY
    delay: float = 0.0
    failures: list[int] = field(default_factory=list)  # statuses for the next calls, in order
    requests: list[dict[str, Any]] = field(default_factory=list)
    usage_reported: list[dict[str, int]] = field(default_factory=list)
    reply: str | None = None  # a fixed answer instead of the OfflineLLM's step

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v1/chat/completions", self.chat, methods=["POST"])])

    def _answer(self, messages: list[dict[str, Any]]) -> str:
        if self.reply is not None:
            return self.reply
        from crews.offline_llm import OfflineLLM

        return OfflineLLM().respond(messages)

    async def chat(self, request: Request) -> Response:
        if request.headers.get("authorization") != f"Bearer {self.key}":
            return JSONResponse({"error": {"message": "Incorrect API key", "type": "invalid_request_error",
                                           "code": "invalid_api_key"}}, status_code=401)
        body = await request.json()
        self.requests.append(body)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.failures:
            status = self.failures.pop(0)
            headers = {"retry-after": "1"} if status == 429 else {}
            kind = "rate_limit_exceeded" if status == 429 else "server_error"
            return JSONResponse({"error": {"message": f"injected {status}", "type": kind, "code": kind}},
                                status_code=status, headers=headers)
        messages = body.get("messages") or []
        words = self._answer(messages).split(" ")
        limit = body.get("max_tokens") or body.get("max_completion_tokens")
        finish = "stop"
        if limit is not None and len(words) > limit:
            words, finish = words[:limit], "length"
        answer = " ".join(words)
        prompt = sum(count_tokens(str(m.get("content") or "")) + 3 for m in messages)
        usage = {"prompt_tokens": prompt, "completion_tokens": count_tokens(answer),
                 "total_tokens": prompt + count_tokens(answer), "prompt_tokens_details": {"cached_tokens": 0}}
        self.usage_reported.append(usage)
        ident, created, model = f"chatcmpl-{uuid.uuid4().hex[:20]}", int(time.time()), body.get("model")
        if not body.get("stream"):
            return JSONResponse({
                "id": ident, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": finish}],
                "usage": usage,
            })
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        async def events():
            base = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model}
            pieces = [answer[i:i + 16] for i in range(0, len(answer), 16)] or [""]
            yield _sse({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
            for piece in pieces:
                yield _sse({**base, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
            yield _sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
            if include_usage:
                yield _sse({**base, "choices": [], "usage": usage})
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"


class ServedProvider:
    """The provider on a real loopback port, in the running event loop."""

    def __init__(self, provider: LoopbackProvider | None = None) -> None:
        self.provider = provider or LoopbackProvider()
        self.server = uvicorn.Server(uvicorn.Config(self.provider.app(), host="127.0.0.1", port=0,
                                                    log_level="warning", lifespan="off"))

    async def __aenter__(self) -> "ServedProvider":
        self.task = asyncio.create_task(self.server.serve())
        while not self.server.started:
            await asyncio.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}/v1"
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        await asyncio.wait_for(self.task, 10)


def main() -> None:
    """`python -m tests.loopback_provider PORT [DELAY_S]`: the provider in its own process (benches)."""
    import sys

    port = int(sys.argv[1])
    provider = LoopbackProvider(delay=float(sys.argv[2]) if len(sys.argv) > 2 else 0.0,
                                reply="A short answer from the loopback provider")
    uvicorn.run(provider.app(), host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
