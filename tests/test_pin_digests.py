"""images/pin_digests.py against a registry on loopback that keeps the real one's rules
(tests/_fx_registry.py, which cites them: Docker's registry token authentication, the OCI
distribution spec v1.1 manifest HEAD/GET, distribution's content negotiation), and the
reference rules of distribution/reference ``normalize.go``."""

from __future__ import annotations

import re
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from _fx_registry import DOCKER_MANIFEST, OCI_INDEX, FakeRegistry
from _scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
PY = "library/python", "3.11.10-slim-bookworm"
VLLM = "vllm/vllm-openai", "v0.33.0"


def _tool():
    return load_script("images/pin_digests.py")


pin = _tool()


def dockerfile(tmp_path: Path, text: str, name: str = "x.Dockerfile") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode())
    return path


@pytest.mark.parametrize("image, host, repository, tag", [
    ("python:3.11", "registry-1.docker.io", "library/python", "3.11"),
    ("docker.io/python:3.11", "registry-1.docker.io", "library/python", "3.11"),
    ("index.docker.io/library/python:3.11", "registry-1.docker.io", "library/python", "3.11"),
    ("vllm/vllm-openai:v0.33.0", "registry-1.docker.io", "vllm/vllm-openai", "v0.33.0"),
    ("pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime", "registry-1.docker.io", "pytorch/pytorch",
     "2.5.1-cuda12.4-cudnn9-runtime"),
    ("ghcr.io/p3-kubeflow/p3-base:0.1.0", "ghcr.io", "p3-kubeflow/p3-base", "0.1.0"),
    ("localhost/python:3", "localhost", "python", "3"),
    ("127.0.0.1:5000/python", "127.0.0.1:5000", "python", ""),
])
def test_reference_names_follow_docker_normalization(image, host, repository, tag):
    """splitDockerDomain: the first component is a host only with '.', ':' or 'localhost';
    Docker Hub's one-component names live under library/ (not on other registries)."""
    ref = pin.parse_reference(image)
    assert (ref.host, ref.repository, ref.tag) == (host, repository, tag)
    assert ref.base_url.startswith("http://" if host.startswith(("127.", "localhost")) else "https://")


def test_the_fake_registry_refuses_what_a_careless_client_sends():
    """The rules that make the next tests able to fail: without a token nothing is served;
    with one but without the index types, a manifest list yields its amd64 manifest (the
    wrong digest) and an OCI index a 404."""
    with FakeRegistry() as reg:
        url = f"{reg.url}/v2/{PY[0]}/manifests/{PY[1]}"
        with pytest.raises(urllib.error.HTTPError) as no_token:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=10)
        assert no_token.value.code == 401
        challenge = pin.bearer_challenge(no_token.value.headers["WWW-Authenticate"])
        assert challenge["scope"] == f"repository:{PY[0]}:pull"

        def head(repository, tag, accept, token_for=None):
            token = pin.pull_token(challenge, pin.parse_reference(f"{reg.host}/{token_for or repository}:{tag}"), 10)
            req = urllib.request.Request(f"{reg.url}/v2/{repository}/manifests/{tag}", method="HEAD",
                                         headers={"Accept": accept, "Authorization": f"Bearer {token}"})
            return urllib.request.urlopen(req, timeout=10)

        single = head(*PY, DOCKER_MANIFEST)
        assert single.headers["Docker-Content-Digest"] == reg.amd64_digest(*PY) != reg.index_digest(*PY)
        with pytest.raises(urllib.error.HTTPError) as oci:
            head(*VLLM, DOCKER_MANIFEST)
        assert oci.value.code == 404
        with pytest.raises(urllib.error.HTTPError) as other_repo:  # a token is for its repository only
            head(*VLLM, OCI_INDEX, token_for=PY[0])
        assert other_repo.value.code == 401


def test_unpinned_bases_are_resolved_to_their_index_digest_and_rewritten(tmp_path, capsys):
    with FakeRegistry() as reg:
        text = ("# a comment with FROM in it\r\n"
                f"FROM {reg.host}/{PY[0]}:{PY[1]} AS build\r\n"
                "RUN echo one\r\n"
                "FROM build\r\n"
                "FROM scratch AS empty\r\n"
                f"from --platform=linux/amd64 {reg.host}/{VLLM[0]}:{VLLM[1]}\r\n"
                "ENTRYPOINT []\r\n")
        path = dockerfile(tmp_path, text)
        assert pin.main([str(path)]) == 0
        py, vllm = reg.index_digest(*PY), reg.index_digest(*VLLM)
        expected = (text.replace(f"{PY[0]}:{PY[1]} AS", f"{PY[0]}:{PY[1]}@{py} AS")
                    .replace(f"{VLLM[1]}\r\n", f"{VLLM[1]}@{vllm}\r\n"))
        assert path.read_bytes().decode() == expected  # CRLF, case, flags, stage names kept
        assert py != reg.amd64_digest(*PY)
        tokens = [c["query"] for c in reg.calls if c["path"] == "/token"]
        assert tokens == [{"service": "fake-registry.test", "scope": f"repository:{PY[0]}:pull"},
                          {"service": "fake-registry.test", "scope": f"repository:{VLLM[0]}:pull"}]
        heads = [c for c in reg.calls if c["method"] == "HEAD"]
        assert [c["headers"].get("authorization", "")[:7] for c in heads] == ["", "Bearer ", "", "Bearer "]
        assert not [c for c in reg.calls if c["method"] == "GET" and c["path"] != "/token"]
    out = capsys.readouterr().out
    assert f"-> {reg.host}/{PY[0]}:{PY[1]}@{py}" in out
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left

    assert pin.main(["--check", str(path)]) == 0


def test_a_pinned_base_is_left_alone_and_repin_follows_a_moved_tag(tmp_path):
    with FakeRegistry() as reg:
        old = reg.index_digest(*PY)
        path = dockerfile(tmp_path, f"FROM {reg.host}/{PY[0]}:{PY[1]}@{old}\n")
        before = path.stat().st_mtime_ns
        reg.retag(*PY)
        assert pin.main([str(path)]) == 0
        assert reg.calls == [] and path.stat().st_mtime_ns == before
        assert pin.main(["--repin", str(path)]) == 0
        assert path.read_text() == f"FROM {reg.host}/{PY[0]}:{PY[1]}@{reg.index_digest(*PY)}\n"
        assert reg.index_digest(*PY) != old


@pytest.mark.parametrize("variant", [{"digest_header": False}, {"access_token_only": True}])
def test_older_registries_and_token_services(tmp_path, variant):
    """No Docker-Content-Digest on HEAD (before OCI distribution v1.1): the manifest's own
    sha256; a token service that answers only ``access_token``."""
    with FakeRegistry(**variant) as reg:
        path = dockerfile(tmp_path, f"FROM {reg.host}/{VLLM[0]}:{VLLM[1]}\n")
        assert pin.main([str(path)]) == 0
        assert path.read_text() == f"FROM {reg.host}/{VLLM[0]}:{VLLM[1]}@{reg.index_digest(*VLLM)}\n"


def test_a_redirect_is_not_followed_with_the_token(tmp_path, capsys):
    """urllib follows 3xx by itself: it would send the pull token to the host the Location
    names (here a second registry, which records what it gets), as a GET. The tool stops at
    the redirect in one line and writes nothing."""
    with FakeRegistry() as elsewhere, FakeRegistry(moved_to=elsewhere.url) as reg:
        path = dockerfile(tmp_path, f"FROM {reg.host}/{PY[0]}:{PY[1]}\n")
        assert pin.main([str(path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "redirected HEAD" in err[0] and elsewhere.url in err[0], err
    assert elsewhere.calls == []
    assert path.read_text() == f"FROM {reg.host}/{PY[0]}:{PY[1]}\n"


def test_an_unknown_tag_is_one_line_and_nothing_is_written(tmp_path, capsys):
    with FakeRegistry() as reg:
        good = dockerfile(tmp_path, f"FROM {reg.host}/{PY[0]}:{PY[1]}\n", "good.Dockerfile")
        bad = dockerfile(tmp_path, f"FROM {reg.host}/{VLLM[0]}:v9.9.9\n", "bad.Dockerfile")
        assert pin.main([str(good), str(bad)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"{bad}: {reg.host}/{VLLM[0]}:v9.9.9: tag v9.9.9 not found in {reg.host}/{VLLM[0]} (404)"]
    assert good.read_text() == f"FROM {reg.host}/{PY[0]}:{PY[1]}\n"  # all or nothing


def test_bad_froms_are_named_before_any_network_call(tmp_path, capsys):
    path = dockerfile(tmp_path, "ARG BASE=python:3\nFROM ${BASE}\nFROM python\n")
    assert pin.main([str(path), str(tmp_path / "missing.Dockerfile")]) == 1
    assert capsys.readouterr().err.strip() == f"{tmp_path / 'missing.Dockerfile'}: no such file"
    assert pin.main([str(path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"{path}: ${{BASE}}: names a build argument; pin it where the argument is set",
                   f"{path}: python: has no tag; write the version tag to pin (name:tag)"]


@pytest.mark.timeout(60)
def test_an_unreachable_registry_is_one_line_within_the_timeout(tmp_path, capsys):
    """A registry that accepts the connection and never answers (the kernel's backlog
    accepts it; nobody reads), and a port nothing listens on."""
    with socket.socket() as silent, socket.socket() as closed:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        closed.bind(("127.0.0.1", 0))  # bound, not listening: connection refused
        host, dead = (f"127.0.0.1:{s.getsockname()[1]}" for s in (silent, closed))
        path = dockerfile(tmp_path, f"FROM {host}/{PY[0]}:{PY[1]}\nFROM {dead}/{PY[0]}:{PY[1]}\n")
        assert pin.main(["--timeout", "0.5", str(path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2
    assert err[0] == f"{path}: {host}/{PY[0]}:{PY[1]}: {host}: no answer within 0.5 s"
    assert err[1].startswith(f"{path}: {dead}/{PY[0]}:{PY[1]}: cannot reach {dead}: ") and "refused" in err[1]
    assert path.read_text().count("@sha256:") == 0


def test_a_token_realm_must_be_https_off_loopback():
    ref = pin.parse_reference("python:3")
    with pytest.raises(pin.PinError, match="not an https URL"):
        pin.pull_token({"realm": "http://auth.example.com/token", "service": "x"}, ref, 1)
    with pytest.raises(pin.PinError, match="only anonymous Bearer"):
        pin.bearer_challenge('Basic realm="registry"')


def test_check_fails_on_an_unpinned_file_without_the_network(tmp_path, capsys):
    digest = "sha256:" + "0" * 64
    pinned = dockerfile(tmp_path, f"FROM python:3.11@{digest} AS a\nFROM a\n", "pinned.Dockerfile")
    loose = dockerfile(tmp_path, f"FROM python:3.11@{digest}\nFROM nvidia/cuda:12.4.1-base-ubuntu22.04\n",
                       "loose.Dockerfile")
    assert pin.main(["--check", str(pinned)]) == 0
    assert pin.main(["--check", str(pinned), str(loose)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"{loose}: nvidia/cuda:12.4.1-base-ubuntu22.04: not pinned by digest "
                   "(run make pin-images where the registry is reachable)"]
    # a digest without the version tag it came from is not pinned either
    bare = dockerfile(tmp_path, f"FROM python@{digest}\n", "bare.Dockerfile")
    assert pin.main(["--check", str(bare)]) == 1
    assert capsys.readouterr().err.strip() == f"{bare}: python@{digest}: names no version tag next to its digest"


def test_make_pin_images_runs_the_tool_and_no_test_or_run_needs_it():
    makefile = (ROOT / "Makefile").read_text()
    rule = re.search(r"^pin-images:(.*)\n((?:\t.*\n?)+)", makefile, re.M)
    assert rule is not None, "Makefile has no pin-images rule"
    assert "images/pin_digests.py images/*.Dockerfile" in rule.group(2)
    for target in ("install", "run", "test", "test-fast", "images"):
        deps = re.search(rf"^{re.escape(target)}:(.*)$", makefile, re.M).group(1)
        assert "pin-images" not in deps
    assert re.search(r"^\.PHONY:.*\bpin-images\b", makefile, re.M)
