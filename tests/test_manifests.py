"""manifests/: a base and kustomize Components (kind: Component, stacked by an overlay's
`components:` list; https://kubectl.docs.kubernetes.io/guides/config_management/components),
built with `kubectl kustomize` and validated against the Kubernetes OpenAPI schemas
(kubernetes-validate, offline, strict: unknown fields fail).

Every build runs on a copy of manifests/ with env files made from the committed examples,
as an operator does (`cp s3.env.example s3.env`): the real files are git-ignored."""

from __future__ import annotations

import functools
import itertools
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
SECRETS_DIR = MANIFESTS / "components" / "secrets"
K8S_VERSIONS = ["1.30.0", "1.33.0", "1.36.0"]  # oldest we support, and recent ones
PROFILE = "kubeflow-user-example-com"
# Component order in an overlay: minio merges into the secrets Component's p3-s3.
ORDER = ["secrets", "minio", "gpu", "gvisor", "sandbox-network", "sandbox-isolation"]
# sandbox-isolation belongs to the sandbox work; it is included when it exists.
COMPONENTS = sorted((p.name for p in (MANIFESTS / "components").iterdir() if (p / "kustomization.yaml").is_file()),
                    key=lambda n: ORDER.index(n) if n in ORDER else len(ORDER))
# Test-only values (not credentials of anything): what an operator writes into s3.env.
S3_ENV = "AWS_ACCESS_KEY_ID=test-user\nAWS_SECRET_ACCESS_KEY=test-password-1\n"

kubectl = shutil.which("kubectl")
pytestmark = pytest.mark.skipif(kubectl is None, reason="kubectl (for `kubectl kustomize`) is not installed")


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """A copy of manifests/ with the secrets' env files written from the examples."""
    root = tmp_path_factory.mktemp("manifests") / "manifests"
    shutil.copytree(MANIFESTS, root, ignore=shutil.ignore_patterns("*.env"))
    secrets = root / "components" / "secrets"
    (secrets / "s3.env").write_text((SECRETS_DIR / "s3.env.example").read_text() + S3_ENV)
    shutil.copy(SECRETS_DIR / "hf.env.example", secrets / "hf.env")
    return root


def overlay(tree: Path, components, namespace: str | None = PROFILE, extra: str = "") -> Path:
    name = "-".join(components) or "none"
    d = tree / "overlays" / f"t-{name}-{namespace or 'nons'}-{abs(hash(extra))}"
    d.mkdir(parents=True, exist_ok=True)
    lines = ["apiVersion: kustomize.config.k8s.io/v1beta1", "kind: Kustomization", "resources: [../../base]",
             "components: [" + ", ".join(f"../../components/{c}" for c in components) + "]"]
    if namespace:
        lines.append(f"namespace: {namespace}")
    (d / "kustomization.yaml").write_text("\n".join(lines) + "\n" + extra)
    return d


def kustomize(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60)


def build(path: Path) -> list[dict]:
    out = kustomize(path)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def by_kind(docs: list[dict]) -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


@functools.cache
def validator():
    import kubernetes_validate

    return kubernetes_validate.validate


def validate(doc: dict, versions: list[str]) -> None:
    """Validate ``doc`` against each version that has its kind; the newest must have it.
    (A Component may need a newer cluster, e.g. sandbox-isolation's admission policies:
    MutatingAdmissionPolicy v1 exists from Kubernetes 1.36.)"""
    from kubernetes_validate.utils import SchemaNotFoundError

    for version in versions:
        try:
            validator()(doc, version, strict=True)
        except SchemaNotFoundError:
            if version == versions[-1]:
                raise


def combinations():
    """Every set of Components that an overlay may list (minio needs secrets)."""
    for n in range(len(COMPONENTS) + 1):
        for combo in itertools.combinations(COMPONENTS, n):
            if "minio" not in combo or "secrets" in combo:
                yield combo


def test_every_component_combination_builds_validates_and_leaves_the_namespace_alone(tree):
    combos = list(combinations())
    assert len(combos) >= 24 and tuple(COMPONENTS) in combos
    for combo in combos:
        docs = build(overlay(tree, combo))
        versions = K8S_VERSIONS if combo == tuple(COMPONENTS) else [K8S_VERSIONS[0], K8S_VERSIONS[-1]]
        for doc in docs:
            validate(doc, versions)
        assert not [d for d in docs if d["kind"] == "Namespace"], combo
        for d in docs:
            if d["kind"] not in ("RuntimeClass",):  # cluster-scoped
                assert d["metadata"]["namespace"] == PROFILE, (combo, d["kind"], d["metadata"]["name"])
            assert "app.kubernetes.io/part-of" not in yaml.safe_dump(d), (combo, d["metadata"]["name"])


def test_the_validator_rejects_a_broken_object(tree):
    from kubernetes_validate.utils import ValidationError

    bad = by_kind(build(overlay(tree, ["sandbox-network"])))[("NetworkPolicy", "p3-sandbox-deny-all")]
    bad = {**bad, "spec": {**bad["spec"], "egres": []}}  # typo'd field
    with pytest.raises(ValidationError):
        validator()(bad, K8S_VERSIONS[0], strict=True)


def test_the_example_overlay_stacks_the_required_combination(tree):
    """overlays/profile lists minio+gpu+sandbox-network (with secrets); with gvisor added
    (the must-reach set) it still builds, and sets only the namespace it is given."""
    text = (tree / "overlays" / "profile" / "kustomization.yaml").read_text()
    listed = [line.split("/")[-1] for line in text.splitlines() if line.startswith("  - ../../components/")]
    assert listed == ["secrets", "minio", "gpu", "sandbox-network"]
    docs = build(tree / "overlays" / "profile")
    assert {d["metadata"]["namespace"] for d in docs} == {PROFILE}
    must = ["secrets", "minio", "gpu", "gvisor", "sandbox-network"]
    docs = build(overlay(tree, must, namespace="team-a"))
    assert "Namespace" not in {d["kind"] for d in docs}
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "RuntimeClass"} == {"team-a"}


def test_minio_needs_the_secrets_component_first_and_says_so(tree):
    out = kustomize(overlay(tree, ["minio"]))
    assert out.returncode != 0 and "p3-s3" in out.stderr and "does not exist" in out.stderr


def test_no_credential_is_committed():
    tracked = subprocess.run(["git", "ls-files", "manifests"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert not [f for f in tracked if f.endswith(".env")], "an env file is committed"
    for name in ("s3.env", "hf.env"):
        ignored = subprocess.run(["git", "check-ignore", "-q", f"manifests/components/secrets/{name}"], cwd=ROOT)
        assert ignored.returncode == 0, f"{name} is not git-ignored"
        example = (SECRETS_DIR / f"{name}.example").read_text()
        for line in example.splitlines():
            assert not line.strip() or line.startswith("#"), f"{name}.example sets a value: {line}"
    for path in MANIFESTS.rglob("*.yaml"):
        text = path.read_text()
        assert "CHANGE-ME" not in text and "stringData" not in text, path


def test_only_the_secrets_component_holds_a_secret(tree):
    """Applying any other Component never resets a credential: none of them holds a
    Secret (minio adds one key to the secrets Component's p3-s3 in the same build)."""
    for c in COMPONENTS:
        if c in ("secrets", "minio"):
            continue
        assert not [d for d in build(overlay(tree, [c])) if d["kind"] == "Secret"], c
    alone = {d["metadata"]["name"] for d in build(overlay(tree, ["secrets"])) if d["kind"] == "Secret"}
    assert alone == {"p3-s3", "p3-hf-token"}


def test_secrets_hold_exactly_the_keys_of_the_env_file_and_build_the_same_twice(tree):
    """The Secret carries only the keys the user's env file lists. `kubectl apply`'s
    merge sets the keys in the applied object and deletes only keys that an earlier apply
    set and this one dropped (last-applied-configuration; server-side apply: fields of
    this field manager), so a value the cluster holds for an unlisted key - one set with
    `kubectl create secret` or by another manager - is left alone, and a second apply of
    the same build changes nothing:
    https://kubernetes.io/docs/tasks/manage-kubernetes-objects/declarative-config/#how-apply-calculates-differences-and-merges-changes
    Without a cluster this test checks what apply is given: the keys, the values, the
    fixed names, and that two builds are byte-identical (no hash suffix, no timestamp)."""
    import base64

    first = kustomize(overlay(tree, ["secrets", "minio"]))
    second = kustomize(overlay(tree, ["secrets", "minio"]))
    assert first.returncode == 0 and first.stdout == second.stdout
    objs = by_kind([d for d in yaml.safe_load_all(first.stdout) if d])
    s3 = {k: base64.b64decode(v).decode() for k, v in objs[("Secret", "p3-s3")]["data"].items()}
    assert s3 == {"AWS_ACCESS_KEY_ID": "test-user", "AWS_SECRET_ACCESS_KEY": "test-password-1",
                  "P3_S3_ENDPOINT_URL": "http://p3-minio:9000"}
    # the example as copied lists no key: the HF token secret is empty, nothing to overwrite
    assert not objs[("Secret", "p3-hf-token")].get("data")
    # generator merge: minio added its key and kept the user's
    s3_alone = by_kind(build(overlay(tree, ["secrets"])))[("Secret", "p3-s3")]["data"]
    assert set(s3_alone) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


def test_a_missing_env_file_stops_the_build(tmp_path):
    """No placeholder is ever applied: without s3.env the secrets Component does not build."""
    root = tmp_path / "manifests"
    shutil.copytree(MANIFESTS, root, ignore=shutil.ignore_patterns("*.env"))
    out = kustomize(overlay(root, ["secrets"]))
    assert out.returncode != 0 and "s3.env" in out.stderr


def test_names_match_what_the_pipeline_is_compiled_with(tree):
    from p3.kfp.builder import S3_KEYS, SANDBOX_LABEL, ClusterSettings

    objs = by_kind(build(overlay(tree, COMPONENTS)))
    c = ClusterSettings()
    assert ("Secret", c.s3_secret) in objs and ("Secret", c.hf_secret) in objs
    assert ("PersistentVolumeClaim", c.model_cache_pvc) in objs
    assert set(objs[("Secret", c.s3_secret)]["data"]) == set(S3_KEYS)
    deny = objs[("NetworkPolicy", "p3-sandbox-deny-all")]["spec"]
    assert deny["podSelector"]["matchLabels"] == dict([SANDBOX_LABEL])


def test_model_cache_defaults_to_rwo_and_takes_a_storage_class(tree):
    pvc = by_kind(build(overlay(tree, [])))[("PersistentVolumeClaim", "p3-model-cache")]["spec"]
    assert pvc["accessModes"] == ["ReadWriteOnce"] and "storageClassName" not in pvc
    # the patch overlays/profile documents, uncommented
    text = (MANIFESTS / "overlays" / "profile" / "kustomization.yaml").read_text()
    patch = "\n".join(line[1:] for line in text.splitlines()[text.splitlines().index("#patches:"):] if line.startswith("#"))
    patch = patch.replace("my-rwx-class", "fast-rwx")
    pvc = by_kind(build(overlay(tree, ["gpu"], extra=patch + "\n")))[("PersistentVolumeClaim", "p3-model-cache")]["spec"]
    assert pvc["storageClassName"] == "fast-rwx" and pvc["accessModes"] == ["ReadWriteMany"]
    assert pvc["resources"]["requests"]["storage"] == "1Ti"  # the gpu Component's size kept


def test_minio_publishes_no_credential_and_configures_the_launcher(tree):
    objs = by_kind(build(overlay(tree, ["secrets", "minio"])))
    pod = objs[("Deployment", "p3-minio")]["spec"]["template"]
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    for name in ("MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"):
        assert "value" not in env[name] and env[name]["valueFrom"]["secretKeyRef"]["name"] == "p3-s3"
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert ":RELEASE." in pod["spec"]["containers"][0]["image"]
    # no sidecar: a Job with one never completes in an Istio-injected profile namespace
    job = objs[("Job", "p3-minio-bucket")]["spec"]["template"]
    assert job["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
    # kfp-launcher: the keys KFP's launcher reads (backend/src/v2/config/env.go, s3.go)
    launcher = objs[("ConfigMap", "kfp-launcher")]["data"]
    assert set(launcher) == {"defaultPipelineRoot", "providers"}
    root = launcher["defaultPipelineRoot"]
    assert root.startswith("s3://p3/")
    assert "mb --ignore-existing p3/p3" in job["spec"]["containers"][0]["args"][0]  # that bucket exists
    s3 = yaml.safe_load(launcher["providers"])["s3"]["default"]
    host, port = s3["endpoint"].split(":")
    service = objs[("Service", "p3-minio")]["spec"]
    assert host == "p3-minio" and int(port) in [p["port"] for p in service["ports"]]
    ref = s3["credentials"]["secretRef"]
    assert s3["credentials"]["fromEnv"] is False and ref["secretName"] == "p3-s3"
    assert {ref["accessKeyKey"], ref["secretKeyKey"]} <= set(objs[("Secret", "p3-s3")]["data"])


# --- NetworkPolicy, evaluated the way Kubernetes does -------------------------------------------
# What KFP's launcher in a sandbox pod talks to, as KFP's own manifests define the Services
# (pod labels and the POD port, i.e. the Service's targetPort, which is what a NetworkPolicy sees):
#   ml-pipeline: app=ml-pipeline, 8887 gRPC / 8888 HTTP (backend/src/v2/config/env.go: port 8887);
#   metadata-grpc-service: component=metadata-grpc-server, 8080;
#   minio-service with SeaweedFS: app=seaweedfs, port 9000 -> targetPort 8333
#     (manifests/kustomize/third-party/seaweedfs/base/seaweedfs/minio-service.yaml);
#   minio-service with MinIO: app=minio, 9000; this project's p3-minio: app=p3-minio, 9000.
KUBEFLOW = {"kubernetes.io/metadata.name": "kubeflow"}
NEEDED = [
    (KUBEFLOW, {"app": "ml-pipeline"}, 8887),
    (KUBEFLOW, {"app": "ml-pipeline"}, 8888),
    (KUBEFLOW, {"component": "metadata-grpc-server"}, 8080),
    (KUBEFLOW, {"app": "seaweedfs"}, 8333),
    (KUBEFLOW, {"app": "minio"}, 9000),
    ({"kubernetes.io/metadata.name": "kube-system"}, {"k8s-app": "kube-dns"}, 53),
    ({"kubernetes.io/metadata.name": PROFILE}, {"app": "p3-minio"}, 9000),
]


def _selects(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels"}, "matchExpressions not modelled here"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def egress_admits(policies: list[dict], pod: dict, ns: dict, peer: dict, port: int, own_ns: str = PROFILE) -> bool:
    """Egress from a pod with labels ``pod`` (in ``own_ns``) to a pod ``peer`` in a namespace
    with labels ``ns`` on TCP/UDP ``port``: allowed iff some policy selecting the pod has a
    rule whose peer matches (namespaceSelector AND podSelector; podSelector alone = own
    namespace) and whose ports include ``port`` (no ports = all). Policies add up.
    https://kubernetes.io/docs/concepts/services-networking/network-policies/"""
    rules = [r for p in policies if _selects(p["spec"]["podSelector"], pod) and "Egress" in p["spec"]["policyTypes"]
             for r in p["spec"].get("egress", [])]
    for rule in rules:
        ports = [p["port"] for p in rule.get("ports", [])]
        if ports and port not in ports:
            continue
        for to in rule.get("to", []):
            assert "ipBlock" not in to
            if "namespaceSelector" in to:
                ns_ok = _selects(to["namespaceSelector"], ns)
            else:
                ns_ok = ns.get("kubernetes.io/metadata.name") == own_ns
            if ns_ok and _selects(to.get("podSelector", {}), peer):
                return True
    return False


def test_sandbox_pods_reach_exactly_the_pipelines_control_plane_and_artifact_store(tree):
    from p3.kfp.builder import SANDBOX_LABEL

    docs = build(overlay(tree, COMPONENTS))
    policies = [d for d in docs if d["kind"] == "NetworkPolicy" and _selects(d["spec"]["podSelector"], dict([SANDBOX_LABEL]))]
    sandbox = dict([SANDBOX_LABEL])
    deny = by_kind(docs)[("NetworkPolicy", "p3-sandbox-deny-all")]["spec"]
    assert set(deny["policyTypes"]) == {"Ingress", "Egress"} and deny["ingress"] == [] and deny["egress"] == []
    for ns, peer, port in NEEDED:
        assert egress_admits(policies, sandbox, ns, peer, port), (peer, port)
    # the old bug: the Service port 9000 of SeaweedFS is not what the pod listens on
    assert not egress_admits(policies, sandbox, KUBEFLOW, {"app": "seaweedfs"}, 9000)
    # nothing else: the Hub, another namespace's pods, other KFP pods, other ports
    assert not egress_admits(policies, sandbox, {"kubernetes.io/metadata.name": "other"}, {"app": "p3-minio"}, 9000)
    assert not egress_admits(policies, sandbox, KUBEFLOW, {"app": "ml-pipeline-ui"}, 3000)
    assert not egress_admits(policies, sandbox, KUBEFLOW, {"app": "ml-pipeline"}, 443)
    admitted = {(tuple(sorted(t.get("podSelector", {}).get("matchLabels", {}).items())), p["port"])
                for pol in policies for r in pol["spec"].get("egress", []) for t in r["to"] for p in r["ports"]}
    needed = {(tuple(sorted(peer.items())), port) for _, peer, port in NEEDED}
    assert admitted == needed, admitted ^ needed
    # a pod without the label is not restricted by these policies at all
    assert not [p for p in docs if p["kind"] == "NetworkPolicy" and _selects(p["spec"]["podSelector"], {"app": "x"})]


def test_gpu_and_gvisor_components(tree):
    gpu = by_kind(build(overlay(tree, ["gpu"])))
    assert "requests.nvidia.com/gpu" in gpu[("ResourceQuota", "p3-gpu-quota")]["spec"]["hard"]
    assert gpu[("PersistentVolumeClaim", "p3-model-cache")]["spec"]["resources"]["requests"]["storage"] == "1Ti"
    gv = by_kind(build(overlay(tree, ["gvisor"])))
    assert gv[("RuntimeClass", "gvisor")]["handler"] == "runsc"
    assert "namespace" not in gv[("RuntimeClass", "gvisor")]["metadata"]
