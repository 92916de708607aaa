"""The component images: Dockerfiles parsed (no docker engine here, so none is built)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

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


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_base_image_is_pinned(name):
    froms = [args for ins, args in instructions(DOCKERFILES[name]) if ins == "FROM"]
    assert froms, "no FROM"
    for ref in froms:
        image = ref.split()[0]
        assert "@sha256:" in image or re.search(r":[^/:]*\d[^/:]*$", image), f"{image} has no version tag"
        assert not image.endswith(":latest")


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
    assert "--constraint" in vllm and "vllm" in vllm
    assert "--constraint" in train and "bitsandbytes" in train


def test_make_images_builds_the_tags_the_pipelines_default_to():
    makefile = (ROOT / "Makefile").read_text()
    rule = re.search(r"^images:.*\n((?:\t.*\n?)+)", makefile, re.M)
    assert rule is not None, "Makefile has no images rule"
    body = rule.group(1)
    for name, path in images.DOCKERFILES.items():
        assert path in body and f"-t $(REGISTRY)/{name}:$(IMAGE_TAG)" in body
    assert re.search(rf"^REGISTRY\s*\?=\s*{re.escape(images.REGISTRY)}\s*$", makefile, re.M)
    assert re.search(rf"^IMAGE_TAG\s*\?=\s*{re.escape(images.TAG)}\s*$", makefile, re.M)
