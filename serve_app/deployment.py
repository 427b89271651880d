"""The Ray Serve ingress deployment.

Serve's defaults break a socket-holding workload: max_ongoing_requests=5 would cap a replica at 5
open WebSockets and each replica would reserve a whole CPU. A replica here mostly waits on sockets
and actor calls, so it reserves a fraction of a CPU and admits thousands of concurrent requests.
"""
from __future__ import annotations

import logging
import os
from typing import Any

from ray import serve

from actors.substrate.gc_policy import quiet_gc
from serve_app.app import create_app
from serve_app.rate_limits import serve_at_edge
from serve_app.runtime import Runtime
from serve_app.settings import Settings

DEPLOYMENT_NAME = "raytenant-ingress"
APP_NAME = "raytenant"
DEFAULT_OPTIONS: dict[str, Any] = {
    "num_replicas": 1,
    "max_ongoing_requests": 20_000,
    "ray_actor_options": {"num_cpus": 0.1},
    "graceful_shutdown_timeout_s": 5,
    # A log line per request costs more than the request at thousands per second; errors still log.
    "logging_config": {"enable_access_log": False},
}


@serve.deployment(name=DEPLOYMENT_NAME, **DEFAULT_OPTIONS)
@serve.ingress()
class Ingress:
    """One replica: its own sockets, its own hub polls, and the shared shard actors behind it."""

    async def __init__(self, settings: dict[str, Any] | None = None) -> None:
        logging.basicConfig(level=os.environ.get("RAYTENANT_LOG_LEVEL", "INFO"))
        self.runtime = Runtime(Settings.from_env(**(settings or {})))
        await self.runtime.start()
        serve_at_edge(self.runtime)
        quiet_gc()

    def __serve_build_asgi_app__(self):
        return create_app(self.runtime)

    async def __del__(self) -> None:
        await self.runtime.stop()


def build(settings: dict[str, Any] | None = None, **options: Any):
    """The bound application. `options` override the deployment options (replicas, CPUs, ...)."""
    return Ingress.options(**options).bind(settings or {})


def app_builder(args: dict[str, Any]):
    """Entry point for serve_config.yaml (`import_path: serve_app.deployment:app_builder`).

    Args may set any Settings field; secrets should come from the environment instead.
    """
    return build(dict(args or {}))
