"""The component images: Dockerfiles parsed (no docker engine here, so none is built)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from _scripts import load_script

from p3.kfp.components import images

ROOT = Path(__file__).resolve().parents[1]


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for line in path.read_text().splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        buf += line.rstrip("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            word, _, rest = buf.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            buf = ""
    return out


DOCKERFILES = {name: ROOT / rel for name, rel in images.DOCKERFILES.items()}


def test_every_image_has_a_dockerfile_and_the_tags_match_the_project_version():
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert images.TAG == version
    for name, path in DOCKERFILES.items():
        assert path.is_file(), path
    assert (ROOT / ".dockerignore").is_file()  # one for every build: the context is the repository root
    assert {images.BASE, images.VLLM, images.TRAIN} == {f"{images.REGISTRY}/{n}:{version}" for n in DOCKERFILES}


# Bases by digest: a tag can be moved to other content, a digest cannot. p3-vllm's digest
# could not be looked up (no registry access here) and is never written by hand: strict, so
# this fails once `make pin-images` has pinned it and the entry must go.
DIGEST_PENDING = {"p3-vllm": "digest pending: run `make pin-images` (images/pin_digests.py) where Docker Hub is reachable"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=DIGEST_PENDING[n]))
                                  if n in DIGEST_PENDING else n for n in sorted(DOCKERFILES)])
def test_base_image_is_pinned_by_digest(name):
    # what `images/pin_digests.py --check` (make pin-images' tool) calls pinned: a digest and its version tag
    assert _pin_module().unpinned(DOCKERFILES[name]) == []


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dependencies_install_in_a_layer_before_the_source(name):
    """A change under src/ must not reinstall transformers: the dependency layer comes
    from pyproject.toml and the committed constraints only, and the source layer installs
    the package alone."""
    ins = instructions(DOCKERFILES[name])
    src_copy = next(i for i, (w, a) in enumerate(ins) if w == "COPY" and "src/" in a)
    deps = [i for i, (w, a) in enumerate(ins) if w == "RUN" and "--requirement requirements.txt" in a]
    assert deps and deps[-1] < src_copy, "dependencies are not installed before the source is copied"
    dep_run = ins[deps[-1]][1]
    assert "--constraint constraints.txt" in dep_run or "--keep-installed constraints.txt" in dep_run
    copied_before = " ".join(a for w, a in ins[:deps[-1]] if w == "COPY")
    assert "images/constraints.txt" in copied_before and "pyproject.toml" in copied_before
    assert "src/" not in copied_before and "README.md" not in copied_before
    later = [a for w, a in ins[src_copy:] if w == "RUN" and "pip install" in a]
    assert later and all("--no-deps" in a for a in later), "the source layer installs dependencies again"
    dockerignore = (ROOT / ".dockerignore").read_text().split()
    assert "!images/constraints.txt" in dockerignore and "!images/lock.py" in dockerignore


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_project_is_installed_from_its_sources(name):
    ins = instructions(DOCKERFILES[name])
    copied = " ".join(args for i, args in ins if i == "COPY")
    for part in ("pyproject.toml", "src/"):
        assert part in copied, f"{part} not copied"
    runs = [args for i, args in ins if i == "RUN"]
    install = next((r for r in runs if re.search(r"pip install\b[^&]*\s\.(\s|$)", r)), None)
    assert install, "the project is not pip-installed"
    # The install proves itself in the same layer: the package and its components import.
    assert "import p3" in install and "p3.kfp.components" in install


CACHE_ENV = ("HOME", "XDG_CACHE_HOME", "MPLCONFIGDIR", "HF_HOME")


def env_of(name: str) -> dict[str, str]:
    """ENV KEY=VALUE pairs of a Dockerfile (the form these use)."""
    pairs = " ".join(a for i, a in instructions(DOCKERFILES[name]) if i == "ENV").split()
    return dict(p.split("=", 1) for p in pairs)


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_any_uid_works(name):
    """OpenShift and `runAsUser` give a UID the image never saw: HOME and every cache are
    set by env into directories anyone may write (mode 1777, like /tmp), nothing is
    chowned to a fixed user, and USER/LOGNAME spare a passwd lookup of the UID."""
    ins = instructions(DOCKERFILES[name])
    env = env_of(name)
    assert set(CACHE_ENV) <= set(env) and env.get("USER") and env.get("LOGNAME")
    writable = [d for w, a in ins if w == "RUN" and "chmod 1777" in a for d in a.split("chmod 1777", 1)[1].split()]
    dirs = [k for k, v in env.items() if v.startswith("/") and k.endswith(("_CACHE_DIR", "_CONFIG_ROOT"))]
    for key in CACHE_ENV + tuple(dirs):
        assert any(env[key] == d or env[key].startswith(d + "/") for d in writable), f"{key}={env[key]} is not writable by any UID"
    runs = " ".join(a for w, a in ins if w == "RUN")
    assert "useradd" not in runs and "chown" not in runs
    user = [a for w, a in ins if w == "USER"][-1]
    assert user.isdigit() and int(user) != 0, "USER must be a non-root number (runAsNonRoot checks it)"


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv to switch to a UID")
def test_the_package_runs_as_a_uid_without_a_passwd_entry():
    """The p3-base env, re-rooted under a temp dir, with a UID no passwd file knows:
    matplotlib, the HF cache and the CLI find writable places (no fallback warning)."""
    import pwd
    import tempfile

    with tempfile.TemporaryDirectory(prefix="p3-uid-") as tmp:  # under /tmp: pytest's own tmp is 0700
        _run_as_stranger(Path(tmp), pwd)


def _run_as_stranger(tmp_path: Path, pwd) -> None:
    uid = 54321
    with pytest.raises(KeyError):
        pwd.getpwuid(uid)
    env = {k: str(tmp_path) + v if v.startswith("/") else v for k, v in env_of("p3-base").items()}
    for d in ("home/p3", "cache"):
        (tmp_path / d).mkdir(parents=True)
        (tmp_path / d).chmod(0o1777)
    tmp_path.chmod(0o755)
    env.update(PATH=os.environ["PATH"], PYTHONPATH=str(ROOT / "src"))
    code = ("import getpass, os, matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt; plt.figure();"
            "from huggingface_hub import constants; os.makedirs(constants.HF_HUB_CACHE, exist_ok=True);"
            "print(getpass.getuser(), constants.HF_HUB_CACHE); import p3.cli")
    out = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", sys.executable, "-c", code],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "is not a writable directory" not in out.stderr and "created a temporary" not in out.stderr, out.stderr
    user, hub = out.stdout.split()
    assert user == "p3" and hub.startswith(str(tmp_path / "cache"))
    assert (tmp_path / "home/p3/.cache/matplotlib").stat().st_uid == uid


def test_constraints_cover_pyproject_and_what_it_pulls_in():
    """images/constraints.txt pins every runtime dependency in pyproject.toml, and those of
    the extras an image installs (lock.IMAGE_EXTRAS), at a version its specifier allows, and
    every package this environment resolves them to (run images/lock.py after changing
    dependencies)."""
    from packaging.requirements import Requirement

    lock = _lock_module()
    pins = _constraints()
    assert "torch" not in pins  # each image brings its own torch build
    deps = lock.dependencies(ROOT / "pyproject.toml", lock.IMAGE_EXTRAS)
    for dep in deps:
        req = Requirement(dep)
        name = lock.canonical(req.name)
        if name in lock.OWN_BUILD:
            continue
        assert name in pins, f"{name} (pyproject.toml) is not in images/constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} does not satisfy {dep}"
    missing = set(lock.closure(deps)) - set(pins) - lock.OWN_BUILD
    assert not missing, f"not pinned (rerun images/lock.py): {sorted(missing)}"


def test_train_image_installs_the_locked_bitsandbytes():
    """p3-train's bitsandbytes (QLoRA) is the version images/constraints.txt locks, the one
    the tests ran in pyproject's qlora range: requested through the qlora extra, so the
    lock decides, or, if the Dockerfile names a version of its own, that same version."""
    from packaging.requirements import Requirement

    lock, pins = _lock_module(), _constraints()
    assert "bitsandbytes" in pins, "images/constraints.txt does not lock bitsandbytes (rerun images/lock.py)"
    ins = instructions(DOCKERFILES["p3-train"])
    build_args = dict(a.split("=", 1) for w, a in ins if w == "ARG" and "=" in a)
    dep_run = next(a for w, a in ins if w == "RUN" and "--requirement requirements.txt" in a)
    dep_run = re.sub(r"\$\{?(\w+)\}?", lambda m: build_args.get(m[1], m[0]), dep_run)
    own = re.findall(r"bitsandbytes==([^\s\"']+)", dep_run)
    assert all(v == pins["bitsandbytes"] for v in own), (
        f"p3-train installs bitsandbytes=={own[0]}; the locked (tested) version is {pins['bitsandbytes']}")
    extras = tuple(re.findall(r"--requirements pyproject.toml((?: --extra \w+)*)", dep_run)[0].split()[1::2])
    requested = {lock.canonical(Requirement(d).name) for d in lock.dependencies(ROOT / "pyproject.toml", extras)}
    assert own or "bitsandbytes" in requested, "p3-train does not install bitsandbytes"


def _constraints() -> dict[str, str]:
    return dict(line.split("==") for line in (ROOT / "images" / "constraints.txt").read_text().splitlines()
                if line and not line.startswith("#"))


def _pin_module():
    return load_script("images/pin_digests.py")


def _lock_module():
    return load_script("images/lock.py")


def test_lock_helpers_the_images_run():
    from importlib import metadata

    lock = [sys.executable, str(ROOT / "images" / "lock.py")]
    out = subprocess.run(lock + ["--requirements", str(ROOT / "pyproject.toml")],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert out == project["dependencies"]
    with_qlora = subprocess.run(lock + ["--requirements", str(ROOT / "pyproject.toml"), "--extra", "qlora"],
                                capture_output=True, text=True, check=True).stdout.splitlines()
    assert with_qlora == project["dependencies"] + project["optional-dependencies"]["qlora"]
    kept = subprocess.run(lock + ["--keep-installed", str(ROOT / "images" / "constraints.txt")],
                          capture_output=True, text=True, check=True).stdout.splitlines()
    # what is installed wins over the file (the GPU images' torch and vllm stay)
    assert f"torch=={metadata.version('torch')}" in kept and f"numpy=={metadata.version('numpy')}" in kept


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_runs_as_a_non_root_user(name):
    users = [args for i, args in instructions(DOCKERFILES[name]) if i == "USER"]
    assert users, "no USER: the container would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")


def test_cpu_image_pins_the_cpu_torch_build():
    runs = " ".join(a for i, a in instructions(DOCKERFILES["p3-base"]) if i in ("RUN", "ARG"))
    assert "download.pytorch.org/whl/cpu" in runs and "torch==${TORCH_VERSION}" in runs


def test_gpu_images_keep_their_cuda_stack():
    vllm = " ".join(a for i, a in instructions(DOCKERFILES["p3-vllm"]) if i == "RUN")
    train = " ".join(a for i, a in instructions(DOCKERFILES["p3-train"]) if i == "RUN")
    assert "--keep-installed" in vllm and "import p3, p3.kfp.components, vllm" in vllm
    assert "--keep-installed" in train and "bitsandbytes" in train


def test_make_images_builds_the_tags_the_pipelines_default_to():
    makefile = (ROOT / "Makefile").read_text()
    rule = re.search(r"^images:.*\n((?:\t.*\n?)+)", makefile, re.M)
    assert rule is not None, "Makefile has no images rule"
    body = rule.group(1)
    for name, path in images.DOCKERFILES.items():
        assert path in body and f"-t $(REGISTRY)/{name}:$(IMAGE_TAG)" in body
    assert re.search(rf"^REGISTRY\s*\?=\s*{re.escape(images.REGISTRY)}\s*$", makefile, re.M)
    assert re.search(rf"^IMAGE_TAG\s*\?=\s*{re.escape(images.TAG)}\s*$", makefile, re.M)
