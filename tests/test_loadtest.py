"""`raytenant loadtest`: Ray tasks drive a live ingress; the report and plot are written."""
from __future__ import annotations

import asyncio
import json

import pytest

from serve_app.cli import main as cli
from serve_app.cli.loadtest import LoadConfig, build_report, percentile, run
from tests.conftest import OPERATOR_TOKEN
from tests.scenario_process import run_scenario_process



@pytest.mark.integration
async def test_loadtest_drives_the_service_from_ray_tasks(pg_live, tmp_path):
    live = pg_live  # one database is enough for the load tester
    config = LoadConfig(url=live.url, operator_token=OPERATOR_TOKEN, workers=2, tenants=3, connections=6, rate=60,
                        duration=4, mix={"usage": 0.4, "publish": 0.4, "recommend": 0.15, "flow": 0.05})
    lines: list[str] = []
    out, png = tmp_path / "report.json", tmp_path / "report.png"
    report = await asyncio.to_thread(run, config, str(out), str(png), show=lines.append)
    assert json.loads(out.read_text()) == report and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert lines and "ops" in lines[-1] and "workers done 2/2" in lines[-1]
    assert report["workers"] == 2 and report["sockets"] == {"opened": 6, "failed": 0}
    assert report["total_ops"] >= 150 and report["total_errors"] == 0, report["operations"]
    for op in ("usage", "publish", "recommend"):
        assert report["operations"][op]["count"] > 0 and report["operations"][op]["p99_ms"] > 0
    assert report["events"]["published"] > 0 and report["events"]["delivered"] >= report["events"]["published"]
    assert report["events"]["lost"] == 0 and report["events"]["duplicated"] == 0
    assert report["timeline"] and "operator_token" not in report["config"]


def test_loadtest_bounds_and_refusals(capsys):
    good = dict(operator_token="op", duration=1)
    LoadConfig(**good).check()
    for bad in ({"url": "http://10.0.0.1:8000"}, {"duration": 601}, {"rate": 0}, {"connections": 10**6},
                {"workers": 0}, {"mix": {"dance": 1}}, {"operator_token": ""}):
        with pytest.raises(ValueError):
            LoadConfig(**{**good, **bad}).check()
    LoadConfig(**good, url="http://10.0.0.1:8000", allow_remote=True).check()
    assert cli.main(["loadtest", "--url", "http://example.com", "--operator-token", "op"]) == 2
    assert "not loopback" in capsys.readouterr().err
    assert percentile([], 50) is None and percentile([1, 2, 3, 4], 50) == 2 and percentile([1, 2, 3, 4], 99) == 4
    empty = build_report(LoadConfig(**good), [], 1.0)
    assert empty["total_ops"] == 0 and empty["operations"] == {}


class _Remote:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def remote(self, *args) -> None:
        self.calls.append(args)


class _Progress:
    """The progress actor's interface, in this process: the worker's code runs here, measured."""

    def __init__(self) -> None:
        self.report, self.done = _Remote(), _Remote()


@pytest.mark.integration
async def test_a_client_worker_in_this_process(pg_live):
    live = pg_live  # one database is enough for the load tester
    from serve_app.cli.loadtest import _tokens, _work

    config = LoadConfig(url=live.url, operator_token=OPERATOR_TOKEN, workers=1, tenants=2, connections=2, rate=40,
                        duration=2.5, mix={"usage": 0.3, "publish": 0.3, "recommend": 0.2, "flow": 0.2})
    progress = _Progress()
    result = await _work(config, 0, _tokens(config), progress)
    assert result["sockets_opened"] == 2 and result["sockets_failed"] == 0
    assert {s[1] for s in result["samples"]} == {"usage", "publish", "recommend", "flow"}
    assert all(ok for _, _, _, ok in result["samples"]) and result["lost"] == 0 and result["duplicated"] == 0
    assert progress.done.calls == [()] and sum(c[0] for c in progress.report.calls) > 0


@pytest.mark.integration
def test_loadtest_workers_spread_over_a_multi_node_cluster(pg_url):
    """On a head and two workers (tests/cluster_loadtest_scenario.py, in its own process), each
    client worker runs on its own node, so the load grows with the cluster."""
    result = run_scenario_process("tests.cluster_loadtest_scenario", pg_url, timeout=240)
    assert len(result["cluster_nodes"]) == 3 and result["workers"] == 3
    assert sorted(result["nodes"]) == result["cluster_nodes"], "one client worker per node"
    assert result["sockets"] == {"opened": 12, "failed": 0}
    assert result["total_ops"] >= 300 and result["total_errors"] == 0, result["operations"]
    assert result["events"]["published"] > 0 and result["events"]["lost"] == 0 and result["events"]["duplicated"] == 0
