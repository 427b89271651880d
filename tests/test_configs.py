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
