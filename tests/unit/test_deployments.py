"""prefect.yaml and the Python deployment definitions describe the same deployments."""

from __future__ import annotations

import importlib
from pathlib import Path

import yaml

from deployments.definitions import WORK_POOL, build_deployments, deployment_specs

REPO = Path(__file__).resolve().parents[2]


def _yaml_deployments() -> dict[str, dict]:
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    return {d["name"]: d for d in spec["deployments"]}


def test_prefect_yaml_matches_python_definitions():
    in_yaml = _yaml_deployments()
    assert set(in_yaml) == set(deployment_specs())
    for name, spec in deployment_specs().items():
        assert in_yaml[name]["work_pool"]["name"] == WORK_POOL
        assert in_yaml[name]["tags"] == spec["tags"]
        assert in_yaml[name]["description"] == spec["description"]


def test_prefect_yaml_entrypoints_are_flows():
    from prefect import Flow

    for name, dep in _yaml_deployments().items():
        module, _, attr = dep["entrypoint"].partition(":")
        obj = getattr(importlib.import_module(module.removesuffix(".py").replace("/", ".")), attr)
        assert isinstance(obj, Flow), name
        assert obj.name == name


def test_python_deployments_build(monkeypatch):
    from ingestflow.core.settings import get_settings

    monkeypatch.setenv("INGESTFLOW_SWEEP_URI", "s3://docs/inbox/")
    get_settings.cache_clear()
    try:
        built = {d.name: d for d in build_deployments()}
    finally:
        get_settings.cache_clear()
    assert set(built) == set(deployment_specs())
    assert all(d.tags == ["ingestflow"] for d in built.values())
    sweep = built["sweep-bucket"]
    assert sweep.parameters["uri"] == "s3://docs/inbox/"
    yaml_cron = _yaml_deployments()["sweep-bucket"]["schedules"][0]["cron"]
    assert [s.schedule.cron for s in sweep.schedules] == [yaml_cron]


def test_sweep_deployment_needs_a_uri(monkeypatch):
    from ingestflow.core.settings import get_settings

    monkeypatch.delenv("INGESTFLOW_SWEEP_URI", raising=False)
    get_settings.cache_clear()
    assert "sweep-bucket" not in {d.name for d in build_deployments()}
