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
