"""Kustomize base and overlays: built with `kubectl kustomize`, validated against the
Kubernetes OpenAPI schemas (kubernetes-validate, offline, strict: unknown fields fail)."""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
TARGETS = ["base", "overlays/minio", "overlays/gpu", "overlays/gvisor", "overlays/recurring"]
K8S_VERSIONS = ["1.30.0", "1.33.0"]  # oldest we support, and a recent one

kubectl = shutil.which("kubectl")
pytestmark = pytest.mark.skipif(kubectl is None, reason="kubectl (for `kubectl kustomize`) is not installed")


@functools.cache
def build(target: str) -> list[dict]:
    out = subprocess.run([kubectl, "kustomize", str(MANIFESTS / target)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def by_kind(docs: list[dict]) -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


@pytest.mark.parametrize("target", TARGETS)
def test_builds_and_validates_against_kubernetes_schemas(target):
    import kubernetes_validate

    docs = build(target)
    assert docs
    for version in K8S_VERSIONS:
        for doc in docs:
            kubernetes_validate.validate(doc, version, strict=True)


def test_the_validator_rejects_a_broken_object():
    import kubernetes_validate
    from kubernetes_validate.utils import ValidationError

    bad = by_kind(build("base"))[("NetworkPolicy", "p3-sandbox-deny-all")]
    bad = {**bad, "spec": {**bad["spec"], "egres": []}}  # typo'd field
    with pytest.raises(ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[0], strict=True)


def test_base_has_what_a_namespace_needs():
    docs = build("base")
    objs = by_kind(docs)
    assert ("Namespace", "p3") in objs
    namespaced = [d for d in docs if d["kind"] != "Namespace"]
    assert all(d["metadata"].get("namespace") == "p3" for d in namespaced)
    s3 = objs[("Secret", "p3-s3")]["stringData"]
    assert set(s3) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "P3_S3_ENDPOINT_URL"}
    assert "HF_TOKEN" in objs[("Secret", "p3-hf-token")]["stringData"]
    pvc = objs[("PersistentVolumeClaim", "p3-model-cache")]["spec"]
    assert pvc["accessModes"] == ["ReadWriteMany"]
    role = objs[("Role", "p3-pipeline-runner")]
    assert any("runs" in r["resources"] and "create" in r["verbs"] for r in role["rules"])
    binding = objs[("RoleBinding", "p3-pipeline-runner")]
    assert binding["subjects"][0]["name"] == objs[("ServiceAccount", "p3-pipeline-runner")]["metadata"]["name"]


def test_names_match_what_the_pipeline_is_compiled_with():
    from p3.kfp.builder import SANDBOX_LABEL, S3_KEYS, ClusterSettings

    objs = by_kind(build("base"))
    c = ClusterSettings()
    assert ("Secret", c.s3_secret) in objs and ("Secret", c.hf_secret) in objs
    assert ("PersistentVolumeClaim", c.model_cache_pvc) in objs
    assert set(objs[("Secret", c.s3_secret)]["stringData"]) == set(S3_KEYS)
    deny = objs[("NetworkPolicy", "p3-sandbox-deny-all")]["spec"]
    assert deny["podSelector"]["matchLabels"] == dict([SANDBOX_LABEL])


def test_sandbox_pods_get_deny_all_plus_only_the_pipeline_control_plane():
    objs = by_kind(build("base"))
    deny = objs[("NetworkPolicy", "p3-sandbox-deny-all")]["spec"]
    assert set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert deny["egress"] == [] and deny["ingress"] == []
    allow = objs[("NetworkPolicy", "p3-sandbox-allow-pipeline")]["spec"]
    assert allow["policyTypes"] == ["Egress"]
    for rule in allow["egress"]:
        # every opening is to a named namespace, on listed ports: never the internet
        assert rule["ports"]
        for peer in rule["to"]:
            assert "ipBlock" not in peer
            assert peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] in ("kube-system", "kubeflow")


def test_minio_overlay_serves_s3_and_points_the_secret_at_it():
    objs = by_kind(build("overlays/minio"))
    deploy = objs[("Deployment", "p3-minio")]["spec"]["template"]["spec"]
    image = deploy["containers"][0]["image"]
    assert ":RELEASE." in image
    assert deploy["securityContext"]["runAsNonRoot"] is True
    assert objs[("Secret", "p3-s3")]["stringData"]["P3_S3_ENDPOINT_URL"] == "http://p3-minio:9000"
    assert ("Service", "p3-minio") in objs and ("Job", "p3-minio-bucket") in objs
    # the base secret keys survive the patch
    assert "AWS_ACCESS_KEY_ID" in objs[("Secret", "p3-s3")]["stringData"]


def test_gpu_and_gvisor_overlays():
    gpu = by_kind(build("overlays/gpu"))
    assert "requests.nvidia.com/gpu" in gpu[("ResourceQuota", "p3-gpu-quota")]["spec"]["hard"]
    assert gpu[("PersistentVolumeClaim", "p3-model-cache")]["spec"]["resources"]["requests"]["storage"] == "1Ti"
    gv = by_kind(build("overlays/gvisor"))
    assert gv[("RuntimeClass", "gvisor")]["handler"] == "runsc"


def test_recurring_run_example_submits_with_a_kfp_audience_token_only():
    objs = by_kind(build("overlays/recurring"))
    cron = objs[("CronJob", "p3-math-weekly")]["spec"]
    pod = cron["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "p3-pipeline-runner"
    assert pod["automountServiceAccountToken"] is False
    token = pod["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"]
    assert token["audience"] == "pipelines.kubeflow.org"
    container = pod["containers"][0]
    assert container["command"][-2:] == ["p3.kfp", "math"] and "--submit" in container["args"]
    from p3.kfp.components import images

    assert container["image"] == images.BASE
