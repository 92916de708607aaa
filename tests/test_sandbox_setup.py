"""What full isolation needs is set up where programs are graded: `make install` on a
machine, and the images of the steps that grade APPS programs."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def path_without(tmp_path):
    """A PATH holding only the named commands (symlinks to the real ones)."""

    def make(*commands):
        folder = tmp_path / "bin"
        folder.mkdir(exist_ok=True)
        for c in commands:
            (folder / c).symlink_to(shutil.which(c))
        return str(folder)

    return make


def test_make_install_says_in_one_line_what_to_install_when_it_cannot(path_without):
    # no bwrap and no apt-get on PATH: nothing can be installed, and the install goes on
    proc = subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), "sandbox-deps"],
                          env={"PATH": path_without("sh", "id", "make")}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "make install: bubblewrap is missing; install it for APPS grading (e.g. sudo apt-get install bubblewrap)"]


def test_make_install_is_quiet_when_bubblewrap_is_there(path_without):
    if not shutil.which("bwrap"):
        pytest.skip("bubblewrap not installed here")
    proc = subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), "sandbox-deps"],
                          env={"PATH": path_without("sh", "id", "make", "bwrap")}, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout == ""


def test_install_runs_the_sandbox_step_as_root_with_apt():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^install: sandbox-deps ", makefile, re.M)
    assert "apt-get install -y -qq bubblewrap" in makefile and '"$$(id -u)" = 0' in makefile


@pytest.mark.parametrize("image", ["p3-base", "p3-vllm"])  # the images the scorer and evaluator run in
def test_images_that_grade_programs_carry_bubblewrap(image):
    text = (ROOT / "images" / f"{image}.Dockerfile").read_text()
    install = re.search(r"^RUN apt-get update && apt-get install -y --no-install-recommends bubblewrap", text, re.M)
    user = re.search(r"^USER ", text, re.M)
    assert install and user and install.start() < user.start()  # installed while still root


COMPONENT = ROOT / "manifests" / "components" / "sandbox-isolation"


@pytest.fixture(scope="module")
def component_docs(tmp_path_factory):
    """The component as an overlay would use it (kustomize takes relative paths only)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (for `kubectl kustomize`) is not installed")
    import yaml

    work = tmp_path_factory.mktemp("overlay")
    (work / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"components:\n  - {os.path.relpath(COMPONENT, work)}\n")
    out = subprocess.run([kubectl, "kustomize", str(work)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(out.stdout) if d}


def test_sandbox_isolation_is_a_component_of_valid_admission_policies(component_docs):
    import kubernetes_validate
    import yaml

    assert yaml.safe_load((COMPONENT / "kustomization.yaml").read_text())["kind"] == "Component"
    assert set(component_docs) == {("MutatingAdmissionPolicy", "p3-sandbox-isolation"),
                                   ("MutatingAdmissionPolicyBinding", "p3-sandbox-isolation"),
                                   ("ValidatingAdmissionPolicy", "p3-sandbox-in-user-namespace"),
                                   ("ValidatingAdmissionPolicyBinding", "p3-sandbox-in-user-namespace")}
    for doc in component_docs.values():  # MutatingAdmissionPolicy is admissionregistration/v1 from 1.36
        kubernetes_validate.validate(doc, "1.36.0", strict=True)
    for kind in ("Mutating", "Validating"):
        policies = [(n, d) for (k, n), d in component_docs.items() if k == f"{kind}AdmissionPolicy"]
        bindings = [d for (k, _), d in component_docs.items() if k == f"{kind}AdmissionPolicyBinding"]
        assert [b["spec"]["policyName"] for b in bindings] == [n for n, _ in policies]
        assert policies[0][1]["spec"]["failurePolicy"] == "Fail"


def test_the_policies_key_on_the_label_the_pipeline_sets(component_docs):
    from p3.kfp.builder import SANDBOX_KINDS, SANDBOX_LABEL

    assert SANDBOX_KINDS == {"score", "evaluate"}
    key, value = SANDBOX_LABEL
    for kind in ("MutatingAdmissionPolicy", "ValidatingAdmissionPolicy"):
        [doc] = [d for (k, _), d in component_docs.items() if k == kind]
        assert doc["spec"]["matchConstraints"]["objectSelector"] == {"matchLabels": {key: value}}
        assert [r["resources"] for r in doc["spec"]["matchConstraints"]["resourceRules"]] == [["pods"]]


def test_the_mutation_sets_what_bubblewrap_needs_in_a_pod(component_docs):
    policy = component_docs[("MutatingAdmissionPolicy", "p3-sandbox-isolation")]["spec"]
    expr = " ".join(policy["mutations"][0]["jsonPatch"]["expression"].split())
    for field in ('path: "/spec/hostUsers", value: false', "runAsUser: 0", "runAsNonRoot: false",
                  'procMount: "Unmasked"', 'type: "Unconfined"', 'type: "RuntimeDefault"',
                  'add: ["SETUID", "SETGID", "SYS_ADMIN"]', 'drop: ["ALL"]', "allowPrivilegeEscalation: false"):
        assert field in expr, field
    [check] = component_docs[("ValidatingAdmissionPolicy", "p3-sandbox-in-user-namespace")]["spec"]["validations"]
    assert check["expression"] == "has(object.spec.hostUsers) && object.spec.hostUsers == false"
    # the slot uids the grader leases must be inside the pod's 65536 mapped uids
    from p3.sandbox import DEFAULT_UID_BASE, UID_RANGE

    assert DEFAULT_UID_BASE + UID_RANGE <= 65536


def test_the_apps_pipeline_labels_its_grading_pods_and_passes_allow_weak_isolation(tmp_path, component_docs):
    """The score and evaluate pods of the APPS pipeline carry the label the admission
    policies select on, and take `allow_weak_isolation` (default false) from the run."""
    import yaml

    from p3.kfp.builder import BuildOptions, compile_pipeline

    path = compile_pipeline(BuildOptions(task="apps", epochs=1), str(tmp_path / "apps.yaml"))
    spec, platform = list(yaml.safe_load_all(Path(path).read_text()))[:2]
    param = spec["root"]["inputDefinitions"]["parameters"]["allow_weak_isolation"]
    assert param["parameterType"] == "BOOLEAN" and param["defaultValue"] is False
    selector = component_docs[("MutatingAdmissionPolicy", "p3-sandbox-isolation")]["spec"]["matchConstraints"]
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    graded = {}
    for name, task in spec["root"]["dag"]["tasks"].items():
        component = task["componentRef"]["name"]
        if component not in ("comp-scorer", "comp-evaluator"):
            continue
        graded[component] = task
        arg = task["inputs"]["parameters"]["allow_weak_isolation"]
        assert arg == {"componentInputParameter": "allow_weak_isolation"}, name
        executor = spec["components"][component]["executorLabel"]
        labels = executors[executor]["podMetadata"]["labels"]
        assert selector["objectSelector"]["matchLabels"].items() <= labels.items(), name
    assert set(graded) == {"comp-scorer", "comp-evaluator"}
