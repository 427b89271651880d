"""cluster.yaml and serve_config.yaml are valid for Ray's own schemas and point at real code."""
from __future__ import annotations

import importlib
from pathlib import Path

import yaml
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.serve.schema import ServeDeploySchema

from serve_app.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def test_serve_config_matches_serve_schema_and_code():
    config = ServeDeploySchema.model_validate(yaml.safe_load((ROOT / "serve_config.yaml").read_text()))
    [app] = config.applications
    module, attr = app.import_path.split(":")
    assert callable(getattr(importlib.import_module(module), attr))
    known = set(Settings.__dataclass_fields__)
    assert set(app.args) <= known, "every arg is a Settings field"
    [deployment] = app.deployments
    assert deployment.name == "raytenant-ingress" and deployment.max_ongoing_requests >= 1000


def test_cluster_yaml_matches_the_launcher_schema():
    for path in ("cluster.yaml", "docs/cluster-local.yaml"):  # AWS, and the local provider (on-premises)
        config = yaml.safe_load((ROOT / path).read_text())
        validate_config(prepare_config(config))  # what `ray up` does: fill defaults, then check
        assert config["head_node_type"] in config["available_node_types"]
        assert any("serve deploy serve_config.yaml" in c for c in config["head_start_ray_commands"])
        assert any("pip install -e" in c for c in config["setup_commands"])


def test_config_checks_can_fail():
    import pytest

    bad = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    bad["max_wrokers"] = 3
    with pytest.raises(Exception):
        validate_config(prepare_config(bad))
    serve_bad = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    serve_bad["applications"][0]["deployments"][0]["max_ongoing_requests"] = "many"
    with pytest.raises(Exception):
        ServeDeploySchema.model_validate(serve_bad)


def serve_connections(config: dict) -> int:
    """The most PostgreSQL connections serve_config.yaml's deployment can hold at its largest."""
    [app] = config["applications"]
    settings = Settings(database_url="postgresql+asyncpg://x/y", operator_token="t", **app["args"])
    env = app["runtime_env"]["env_vars"]
    per_engine = int(env["RAYTENANT_DB_POOL_SIZE"]) + int(env["RAYTENANT_DB_MAX_OVERFLOW"])
    [deployment] = app["deployments"]
    return settings.engines(deployment["autoscaling_config"]["max_replicas"]) * per_engine


def test_serve_config_stays_within_postgres_connections():
    """Every shard and replica at the deployment's largest stays under PostgreSQL's default
    max_connections (100), as the file's comment says."""
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    assert serve_connections(config) <= 90
    config["applications"][0]["args"]["hub_shards"] = 16  # more shards need a smaller pool
    assert serve_connections(config) > 90


def test_connection_budget_sets_the_pool(monkeypatch):
    from serve_app.cli.launcher import budget_connections
    from storage.engine import PoolLimits, pool_size_for

    import pytest

    settings = Settings(database_url="postgresql+asyncpg://x/y", operator_token="t", hub_shards=4)
    assert settings.engines(replicas=3) == 4 + 6 + 6
    for name in ("RAYTENANT_DB_POOL_SIZE", "RAYTENANT_DB_MAX_OVERFLOW"):  # restored after the test,
        monkeypatch.setenv(name, "5")  # although budget_connections sets them itself
        monkeypatch.delenv(name)
    assert budget_connections(settings, 3) == 16 * 10  # no budget set: the default pools
    monkeypatch.setenv("RAYTENANT_DB_MAX_CONNECTIONS", "80")
    assert budget_connections(settings, 3) <= 80
    assert PoolLimits.from_env().size == pool_size_for(80, 16) == 2
    with pytest.raises(ValueError):
        pool_size_for(20, 16)  # not even one connection and one spare per engine
    monkeypatch.setenv("RAYTENANT_DB_POOL_SIZE", "0")
    with pytest.raises(ValueError):
        PoolLimits.from_env()


def test_kuberay_rayservice_runs_serve_config_with_gcs_fault_tolerance():
    """docs/kuberay-rayservice.yaml: its serveConfigV2 is valid for Serve's schema and is
    serve_config.yaml's application; its cluster keeps the GCS in Redis. (The whole manifest was
    checked against KubeRay's RayService CRD, v1, when written; the CRD is not shipped here.)"""
    manifest = yaml.safe_load((ROOT / "docs/kuberay-rayservice.yaml").read_text())
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayService"
    serve_config = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(serve_config)
    shipped = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    assert serve_config["applications"] == shipped["applications"]
    cluster = manifest["spec"]["rayClusterConfig"]
    assert cluster["gcsFaultToleranceOptions"]["redisAddress"]
    assert cluster["rayVersion"] == importlib.import_module("ray").__version__
    head_env = {e["name"] for e in cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]}
    assert {"RAY_SERVE_ENABLE_DIRECT_INGRESS", "DATABASE_URL", "RAYTENANT_OPERATOR_TOKEN"} <= head_env
