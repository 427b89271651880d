"""Starting Ray and deploying the ingress, shared by `raytenant run`, the tests and the benches.

Serve reads RAY_SERVE_* settings when its modules are imported, in every Ray process, so they go
into the environment before Ray starts (a local Ray passes the driver's environment to its
workers). Direct ingress is the default: the ingress replica serves HTTP and WebSocket itself
instead of behind the Serve proxy, which measured ~8x the requests/s here (docs/operations.md).
"""
from __future__ import annotations

import contextlib
import os
import time
from typing import Any, Iterator

SERVE_ENV = {
    "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
    "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": "30000",
    "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": "30999",
    "RAY_worker_niceness": "0",
    # Run the ASGI app on the replica's own event loop: no cross-thread hop per message sent
    # (profiling showed the hop as the largest cost of a WebSocket send). Our handlers never block.
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_DEFAULT_HTTP_HOST": "127.0.0.1",
    # Serve keeps a removed direct-ingress replica draining 30 s for external load balancers; a
    # local service has none, and Ctrl-C should not hang that long. Clusters may raise it again.
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
    # Rate-limit refusals before Serve's per-request work (serve_app/rate_limits.py).
    "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "serve_app.rate_limits:edge_middlewares",
}


def configure_environment(direct_ingress: bool = True) -> None:
    """Set Serve's environment before `import ray`; values already set by the operator win."""
    for key, value in SERVE_ENV.items():
        os.environ.setdefault(key, value)
    if not direct_ingress:
        os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] = "0"


def budget_connections(settings: Any, replicas: int) -> int:
    """Keep the deployment's PostgreSQL connections within RAYTENANT_DB_MAX_CONNECTIONS (when set):
    each engine's pool size (and overflow) becomes that budget over twice the number of engines,
    set in the environment before Ray starts so every actor process reads it. Returns the most
    connections the deployment can hold. Ray processes started elsewhere (a cluster's nodes) get
    RAYTENANT_DB_POOL_SIZE from their own environment (cluster.yaml)."""
    from storage.engine import PoolLimits, pool_size_for

    engines = settings.engines(replicas)
    budget = os.environ.get("RAYTENANT_DB_MAX_CONNECTIONS", "")
    if budget and "RAYTENANT_DB_POOL_SIZE" not in os.environ:
        size = pool_size_for(int(budget), engines)
        os.environ["RAYTENANT_DB_POOL_SIZE"] = os.environ["RAYTENANT_DB_MAX_OVERFLOW"] = str(size)
    limits = PoolLimits.from_env()
    return engines * (limits.size + limits.overflow)


@contextlib.contextmanager
def metrics_enabled() -> Iterator[None]:
    """Ray's metrics agent records through the OpenTelemetry SDK, which OTEL_SDK_DISABLED switches
    off in every process started with it. That variable is set for crewai (whose telemetry stays off
    through CREWAI_DISABLE_TELEMETRY, and which sets it again where it is imported), so Ray's
    processes are started without it."""
    saved = os.environ.pop("OTEL_SDK_DISABLED", None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ["OTEL_SDK_DISABLED"] = saved


def start_ray(*, num_cpus: int | None = None, dashboard: bool = True, metrics_port: int | None = None) -> Any:
    import ray

    kwargs: dict[str, Any] = {
        "address": "local",  # always our own Ray: never join a cluster another run left behind
        "namespace": "raytenant",
        "include_dashboard": dashboard,
        "dashboard_host": "127.0.0.1",
        "log_to_driver": False,
    }
    if num_cpus is not None:
        kwargs["num_cpus"] = num_cpus
    if metrics_port is not None:
        kwargs["_metrics_export_port"] = metrics_port
    with metrics_enabled():
        return ray.init(**kwargs)


def deploy(settings: dict[str, Any], *, host: str = "127.0.0.1", port: int = 8000, **options: Any) -> list[str]:
    """Deploy the ingress and return the base URLs that serve it, fastest first."""
    from ray import serve

    from serve_app.deployment import APP_NAME, build

    serve.start(http_options={"host": host, "port": port})
    serve.run(build(settings, **options), name=APP_NAME, route_prefix="/", blocking=False)
    return ingress_urls(host, port)


def ingress_urls(host: str = "127.0.0.1", port: int = 8000, timeout: float = 60.0) -> list[str]:
    """Direct-ingress replica URLs (when enabled) followed by the proxy URL.

    The replica ports come from Serve's target groups (the same data the dashboard's Serve view
    shows); they are allocated from RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT upwards. Replicas bind
    the configured HTTP host, so the URL uses that host rather than the node address Serve reports.
    """
    from ray.serve.context import _get_global_client

    proxy = f"http://{host}:{port}"
    if os.environ.get("RAY_SERVE_ENABLE_DIRECT_INGRESS") != "1":
        return [proxy]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        details = _get_global_client().get_serve_details()
        urls = [
            f"http://{host}:{target['port']}"
            for group in details.get("target_groups", [])
            if str(group.get("protocol", "")).upper().endswith("HTTP")
            for target in group.get("targets", [])
            if target.get("port") and target["port"] != port
        ]
        if urls:
            return sorted(set(urls)) + [proxy]
        time.sleep(0.5)
    return [proxy]
