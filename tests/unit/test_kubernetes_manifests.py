"""deploy/kubernetes is valid Kubernetes, valid KEDA, and in step with the CLI.

Offline: the Kubernetes API schemas ship inside the ``kubernetes-validate`` package; KEDA's
are the ``openAPIV3Schema`` of its CRDs, vendored in tests/support/keda (source in each file's
``$comment``). A CRD's schema lets unknown fields through (the API server prunes them), so
the KEDA check closes every object that lists its properties: a misspelt field is an error
here rather than silently dropped by the cluster.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from app.cli.main import build_parser
from tests.support.paths import ROOT

DEPLOY = ROOT / "deploy" / "kubernetes"
KEDA = ROOT / "tests" / "support" / "keda"
# The oldest Kubernetes the manifests are meant for, and the newest the package knows.
KUBERNETES_VERSIONS = ("1.29", kubernetes_validate.utils.latest_version())
KEDA_SCHEMAS = {
    "ScaledObject": "scaledobjects.json",
    "TriggerAuthentication": "triggerauthentications.json",
}
# What KEDA's postgresql scaler reads from a trigger's metadata (pkg/scalers/postgresql_scaler.go).
POSTGRESQL_METADATA = {
    "query",
    "targetQueryValue",
    "activationTargetQueryValue",
    "connectionFromEnv",
    "host",
    "port",
    "userName",
    "dbName",
    "sslmode",
    "passwordFromEnv",
}


def _resources() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]
    return docs


RESOURCES = _resources()


def _one(kind: str, name: str) -> dict[str, Any]:
    (found,) = [r for r in RESOURCES if r["kind"] == kind and r["metadata"]["name"] == name]
    return found


def _closed(schema: Any) -> Any:
    """The schema with ``additionalProperties: false`` wherever properties are listed."""
    if isinstance(schema, dict):
        schema = {k: _closed(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_closed(v) for v in schema]
    return schema


def _keda_validator(kind: str) -> jsonschema.protocols.Validator:
    schema = json.loads((KEDA / KEDA_SCHEMAS[kind]).read_text())
    schema.pop("$comment")
    schema = _closed(schema)
    schema["properties"]["metadata"] = {"type": "object"}  # ObjectMeta: checked below
    return jsonschema.Draft7Validator(schema)


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    on_disk = {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == on_disk
    kinds = {r["kind"] for r in RESOURCES}
    assert {"ConfigMap", "Deployment", "Service", "Job", "PodDisruptionBudget"} <= kinds
    assert {"ScaledObject", "TriggerAuthentication"} <= kinds


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize(
    "resource",
    [r for r in RESOURCES if r["kind"] not in KEDA_SCHEMAS],
    ids=lambda r: f"{r['kind']}/{r['metadata']['name']}",
)
def test_kubernetes_resources_match_the_api_schema(resource, version):
    # strict: unknown fields are errors, as with `kubectl apply --validate=strict`.
    kubernetes_validate.validate(resource, version, strict=True)


@pytest.mark.parametrize(
    "resource",
    [r for r in RESOURCES if r["kind"] in KEDA_SCHEMAS],
    ids=lambda r: f"{r['kind']}/{r['metadata']['name']}",
)
def test_keda_resources_match_the_crd_schema(resource):
    assert resource["apiVersion"] == "keda.sh/v1alpha1"
    _keda_validator(resource["kind"]).validate(resource)
    # ObjectMeta as far as these manifests use it.
    assert set(resource["metadata"]) <= {"name", "namespace", "labels", "annotations"}


def test_the_keda_check_catches_mistakes():
    scaled = _one("ScaledObject", "tiergate-worker")
    validator = _keda_validator("ScaledObject")
    for path, value in [
        (("spec", "minReplicaCount"), "one"),
        (("spec", "pollingIntervall"), 15),  # misspelt
        (("spec", "scaleTargetRef"), {}),  # name is required
    ]:
        broken = copy.deepcopy(scaled)
        broken[path[0]][path[1]] = value
        with pytest.raises(jsonschema.ValidationError):
            validator.validate(broken)
    broken = copy.deepcopy(scaled)
    del broken["spec"]["triggers"][0]["metadata"]
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(broken)


def test_the_kubernetes_check_catches_mistakes():
    deployment = copy.deepcopy(_one("Deployment", "tiergate-gateway"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def test_containers_run_real_cli_commands():
    parser = build_parser()
    commands = {}
    for resource in RESOURCES:
        if resource["kind"] in ("Deployment", "Job"):
            (container,) = resource["spec"]["template"]["spec"]["containers"]
            parser.parse_args(container["args"])  # exits on an unknown flag
            commands[resource["metadata"]["name"]] = container
            env = {e["name"]: e for e in container["env"]}
            secret = env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]
            assert (secret["name"], secret["key"]) == ("tiergate-database", "DATABASE_URL")
            assert env["TIERGATE_CONFIG"]["value"] == "/etc/tiergate/tiergate.yaml"
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            volumes = {v["name"]: v for v in resource["spec"]["template"]["spec"]["volumes"]}
            assert volumes[mounts["/etc/tiergate"]]["configMap"]["name"] == "tiergate-config"
    gateway = parser.parse_args(commands["tiergate-gateway"]["args"])
    assert (gateway.command, gateway.no_worker) == ("serve", True)
    worker = parser.parse_args(commands["tiergate-worker"]["args"])
    assert worker.command == "worker" and worker.metrics_port is not None
    port = commands["tiergate-worker"]["ports"][0]["containerPort"]
    assert port == worker.metrics_port and worker.metrics_host == "0.0.0.0"
    assert parser.parse_args(commands["tiergate-migrate"]["args"]).command == "migrate"
    probes = commands["tiergate-gateway"]
    assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for container in commands.values():
        assert container["resources"]["requests"] and container["resources"]["limits"]


def test_the_config_map_holds_a_valid_config(tmp_path: Path):
    from app.settings import Settings

    config = tmp_path / "tiergate.yaml"
    config.write_text(_one("ConfigMap", "tiergate-config")["data"]["tiergate.yaml"])
    settings = Settings.from_env({"TIERGATE_CONFIG": str(config)})
    assert "llama-70b" in settings.models


def test_selectors_and_references_meet():
    def pod_labels(name: str) -> dict[str, str]:
        return _one("Deployment", name)["spec"]["template"]["metadata"]["labels"]

    service = _one("Service", "tiergate")
    assert service["spec"]["selector"].items() <= pod_labels("tiergate-gateway").items()
    container = _one("Deployment", "tiergate-gateway")["spec"]["template"]["spec"]["containers"]
    assert service["spec"]["ports"][0]["targetPort"] in {p["name"] for p in container[0]["ports"]}
    for name in ("tiergate-gateway", "tiergate-worker"):
        deployment = _one("Deployment", name)
        assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels(name).items()
        pdb = _one("PodDisruptionBudget", name)
        assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels(name).items()
        others = [d for d in RESOURCES if d["kind"] == "Deployment" and d is not deployment]
        for other in others:  # a PDB covers its own pods only
            labels = other["spec"]["template"]["metadata"]["labels"]
            assert not pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_scaled_object_scales_the_worker_on_the_postgresql_queue():
    scaled = _one("ScaledObject", "tiergate-worker")["spec"]
    target = scaled["scaleTargetRef"]
    assert target.get("kind", "Deployment") == "Deployment"
    _one("Deployment", target["name"])
    assert target["name"] == "tiergate-worker"
    assert 0 <= scaled["minReplicaCount"] < scaled["maxReplicaCount"]
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "postgresql"
    metadata = trigger["metadata"]
    assert set(metadata) <= POSTGRESQL_METADATA
    assert all(isinstance(v, str) for v in metadata.values())  # KEDA wants strings
    assert float(metadata["targetQueryValue"]) > 0
    assert float(metadata["activationTargetQueryValue"]) >= 0
    assert "queue_depth" in metadata["query"]
    auth = _one("TriggerAuthentication", trigger["authenticationRef"]["name"])
    (ref,) = auth["spec"]["secretTargetRef"]
    assert (ref["parameter"], ref["name"], ref["key"]) == (
        "connection",
        "tiergate-database",
        "DATABASE_URL",
    )


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="no kubectl on this machine")
def test_kustomize_renders_what_is_validated():
    """Where kubectl exists, its kustomize renders the same resources, labels added."""
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(DEPLOY)], capture_output=True, text=True, timeout=60
    )
    assert rendered.returncode == 0, rendered.stderr
    docs = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    assert sorted((d["kind"], d["metadata"]["name"]) for d in docs) == sorted(
        (r["kind"], r["metadata"]["name"]) for r in RESOURCES
    )
    for doc in docs:
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "tiergate"
        if doc["kind"] in KEDA_SCHEMAS:
            _keda_validator(doc["kind"]).validate(doc)
        else:
            kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[-1], strict=True)


def test_docs_show_the_query_keda_runs():
    (trigger,) = _one("ScaledObject", "tiergate-worker")["spec"]["triggers"]
    docs = (ROOT / "docs" / "operations.md").read_text()
    shown = [block for block in docs.split("```sql\n")[1:] if "queue_depth_counted" in block]
    assert len(shown) == 1
    assert " ".join(shown[0].split("```")[0].split()) == " ".join(
        trigger["metadata"]["query"].split()
    )
