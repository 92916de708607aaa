"""Pin each Dockerfile's base image by digest: ``FROM name:tag`` becomes
``FROM name:tag@sha256:…``, the digest the registry gives for that tag now. The tag stays
beside the digest for the reader; the builder pulls by the digest, which cannot be moved.

    python3 images/pin_digests.py images/*.Dockerfile          # resolve and rewrite (make pin-images)
    python3 images/pin_digests.py --check images/*.Dockerfile  # exit 1 if a FROM lacks a digest
    python3 images/pin_digests.py --repin images/*.Dockerfile  # re-resolve pinned tags too

Standard library only, no network in ``--check``. It needs the registry (Docker Hub for the
bases used here), so it is run by a maintainer, not by ``make test``. Nothing is written
unless every FROM of every file resolved; then each file is replaced whole (temp file +
``os.replace``).

The protocol, as the sources define it:

- Name -> registry and repository: distribution/reference ``normalize.go``
  (``splitDockerDomain``): the first path component is a host when it contains ``.`` or
  ``:`` or is ``localhost``; otherwise the image is on Docker Hub (``docker.io``, whose
  registry is ``registry-1.docker.io``), where a one-component name gets ``library/``.
- Anonymous pull token: Docker "Registry authentication"
  (https://docs.docker.com/reference/api/registry/auth/, the token spec of
  distribution/distribution ``docs/spec/auth/token.md``): the registry answers ``401`` with
  ``WWW-Authenticate: Bearer realm="…",service="…",scope="…"``; the client GETs
  ``realm?service=…&scope=repository:<name>:pull`` and retries with
  ``Authorization: Bearer <token>``. The answer carries ``token``, or ``access_token``
  (its OAuth 2.0 alias).
- The digest: OCI distribution spec v1.1, "Checking if content exists in the registry"
  (https://github.com/opencontainers/distribution-spec/blob/main/spec.md): ``HEAD
  /v2/<name>/manifests/<tag>`` answers ``200`` with ``Docker-Content-Digest``, or ``404``.
  Registries of earlier spec versions may omit the header ("the clients can reasonably
  assume the digest algorithm used is sha256"): then the manifest is fetched with GET and
  its bytes hashed.
- Accept: the multi-platform index must be asked for by type. Given no index type,
  distribution rewrites a Docker manifest list to the linux/amd64 manifest
  (``docs/spec/manifest-v2-2.md``, "Backward compatibility") and answers an OCI index with
  ``404 MANIFEST_UNKNOWN`` (``registry/handlers/manifests.go``). The index digest is the one
  that ``docker pull name@sha256:…`` resolves on every platform.
- Plain http only for loopback registries, as Docker's default insecure registries are
  ``127.0.0.0/8`` and ``::1`` (Engine API, ``RegistryServiceConfig``); https for the rest.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import ipaddress
import json
import os
import re
import socket
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

DOCKER_HUB = "docker.io"
DOCKER_HUB_REGISTRY = "registry-1.docker.io"
# Index types first: a registry returns the stored type when the client accepts it.
MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
FROM_LINE = re.compile(r"^(\s*FROM\s+(?:--\S+\s+)*)(\S+)(.*)$", re.IGNORECASE)
MAX_BODY = 4 * 1024 * 1024  # registries SHOULD accept manifests up to 4 MiB (OCI distribution spec)


class PinError(Exception):
    """Why one image could not be resolved (one line)."""


@dataclass(frozen=True)
class Reference:
    """An image reference split as Docker splits it."""

    name: str  # as written, without tag and digest
    host: str  # the registry's host[:port]
    repository: str  # the path on the registry (library/ added on Docker Hub)
    tag: str  # "" when none is written
    digest: str  # "" when none is written

    @property
    def base_url(self) -> str:
        scheme = "http" if is_loopback(self.host) else "https"
        return f"{scheme}://{self.host}"


def parse_reference(image: str) -> Reference:
    """``[host/]path[:tag][@digest]`` -> Reference (distribution/reference rules)."""
    rest, _, digest = image.partition("@")
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    name, tag = (rest[:colon], rest[colon + 1:]) if colon > slash else (rest, "")
    first, sep, remainder = name.partition("/")
    if sep and (first == "localhost" or any(c in first for c in ".:") or first.lower() != first):
        host, repository = first, remainder
    else:
        host, repository = DOCKER_HUB, name
    if host == "index.docker.io":
        host = DOCKER_HUB
    if host == DOCKER_HUB and "/" not in repository:
        repository = "library/" + repository
    if not repository or repository.lower() != repository:
        raise PinError(f"not an image name (repository must be lowercase): {image}")
    if digest and not DIGEST.fullmatch(digest):
        raise PinError(f"not a sha256 digest: {digest}")
    return Reference(name=name, host=DOCKER_HUB_REGISTRY if host == DOCKER_HUB else host,
                     repository=repository, tag=tag, digest=digest)


def is_loopback(host: str) -> bool:
    """Whether ``host[:port]`` is this machine (localhost, 127.0.0.0/8, ::1)."""
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 or host.startswith("[") else host
    name = name.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is answered as it came (3xx), not followed: urllib would re-send the
    Authorization header to whatever host the Location names, turn a HEAD into a GET and
    follow https to http."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def request(url: str, method: str, headers: dict[str, str], timeout: float) -> tuple[int, dict[str, str], bytes]:
    """One HTTP exchange: (status, headers with lowercase names, body). Errors of the
    transport (DNS, refused, timeout) become a PinError naming the host; a redirect is
    one too (pin from the registry it names)."""
    req = urllib.request.Request(url, method=method, headers=headers)
    host = urllib.parse.urlsplit(url).netloc
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            status, head, body = resp.status, resp.headers, resp.read(MAX_BODY + 1)
    except urllib.error.HTTPError as err:
        status, head = err.code, err.headers
        if 300 <= status < 400:
            raise PinError(f"{host} redirected {method} {urllib.parse.urlsplit(url).path} to "
                           f"{head.get('Location', '(no Location)')}; redirects are not followed") from None
        body = b""  # an error's body is not used, and reading it could fail past the one-line errors
    except (TimeoutError, socket.timeout):
        raise PinError(f"{host}: no answer within {timeout:g} s") from None
    except urllib.error.URLError as err:
        if isinstance(err.reason, (TimeoutError, socket.timeout)):
            raise PinError(f"{host}: no answer within {timeout:g} s") from None
        raise PinError(f"cannot reach {host}: {err.reason}") from None
    except (OSError, http.client.HTTPException) as err:
        raise PinError(f"cannot reach {host}: {err or type(err).__name__}") from None
    if len(body) > MAX_BODY:  # a truncated manifest would hash to a wrong digest
        raise PinError(f"{host} answered with more than {MAX_BODY} bytes")
    return status, {k.lower(): v for k, v in head.items()}, body


def bearer_challenge(header: str) -> dict[str, str]:
    """The parameters of a ``Bearer`` WWW-Authenticate challenge."""
    scheme, _, params = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise PinError(f"the registry asks for {scheme or 'unknown'} authentication; only anonymous Bearer tokens are used here")
    return dict(re.findall(r'(\w+)="([^"]*)"', params))


def pull_token(challenge: dict[str, str], ref: Reference, timeout: float) -> str:
    """An anonymous token for ``repository:<name>:pull`` from the challenge's realm."""
    realm = challenge.get("realm", "")
    parts = urllib.parse.urlsplit(realm)
    if parts.scheme != "https" and not (parts.scheme == "http" and is_loopback(parts.netloc)):
        raise PinError(f"token realm {realm or '(none)'} is not an https URL")
    query = {"scope": f"repository:{ref.repository}:pull"}
    if challenge.get("service"):
        query = {"service": challenge["service"], **query}
    sep = "&" if parts.query else "?"
    status, _, body = request(realm + sep + urllib.parse.urlencode(query), "GET", {}, timeout)
    if status != 200:
        raise PinError(f"token service {parts.netloc} answered {status}")
    try:
        answer = json.loads(body)
        token = answer.get("token") or answer.get("access_token")
    except (ValueError, AttributeError):
        token = None
    if not isinstance(token, str) or not token:
        raise PinError(f"token service {parts.netloc} gave no token")
    return token


def resolve(ref: Reference, timeout: float) -> str:
    """The digest the registry gives now for ``ref``'s tag (its multi-platform index when it
    has one)."""
    url = f"{ref.base_url}/v2/{ref.repository}/manifests/{ref.tag}"
    headers = {"Accept": ", ".join(MANIFEST_TYPES)}
    status, head, _ = request(url, "HEAD", headers, timeout)
    if status == 401:
        challenge = bearer_challenge(head.get("www-authenticate", ""))
        headers["Authorization"] = "Bearer " + pull_token(challenge, ref, timeout)
        status, head, _ = request(url, "HEAD", headers, timeout)
    if status in (401, 403):
        raise PinError(f"{ref.host} refused anonymous pull of {ref.repository} ({status}: private, or no such repository)")
    if status == 404:
        raise PinError(f"tag {ref.tag} not found in {ref.host}/{ref.repository} (404)")
    if status != 200:
        raise PinError(f"{ref.host} answered {status} for {ref.repository}:{ref.tag}")
    digest = head.get("docker-content-digest", "")
    if not digest:  # registries before OCI distribution v1.1: hash the manifest itself
        status, head, body = request(url, "GET", headers, timeout)
        if status != 200:
            raise PinError(f"{ref.host} answered {status} to GET of {ref.repository}:{ref.tag}")
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if head.get("docker-content-digest", digest) != digest:
            raise PinError(f"{ref.host} sent a manifest whose sha256 is not its Docker-Content-Digest")
    if not DIGEST.fullmatch(digest):
        raise PinError(f"{ref.host} gave a digest that is not sha256: {digest}")
    return digest


@dataclass
class From:
    """One FROM line of a Dockerfile."""

    line: int  # index into the file's lines
    image: str


def from_lines(lines: list[str]) -> list[From]:
    """The FROM lines naming a registry image (not ``scratch``, not an earlier stage)."""
    stages, found = set(), []
    for i, line in enumerate(lines):
        m = FROM_LINE.match(line.rstrip("\r\n"))
        if not m:
            continue
        image, tail = m.group(2), m.group(3).split()
        if image.lower() != "scratch" and image.lower() not in stages:
            found.append(From(i, image))
        if len(tail) >= 2 and tail[0].lower() == "as":
            stages.add(tail[1].lower())
    return found


def unpinned(path: Path) -> list[str]:
    """One line per FROM of ``path`` that is not pinned (``--check``): a sha256 digest, next
    to the version tag it was resolved from (a reader sees which release it is, and
    ``--repin`` can follow that tag)."""
    lines = path.read_text().splitlines()
    froms = from_lines(lines)
    if not froms:
        return [f"{path}: no FROM line"]
    out = []
    for f in froms:
        try:
            ref = parse_reference(f.image)
        except PinError as err:
            out.append(f"{path}: {f.image}: {err}")
            continue
        if not ref.digest:
            out.append(f"{path}: {f.image}: not pinned by digest (run make pin-images where the registry is reachable)")
        elif not re.search(r"\d", ref.tag):
            out.append(f"{path}: {f.image}: names no version tag next to its digest")
    return out


def plan(path: Path, repin: bool, timeout: float, cache: dict) -> tuple[list[str], list[str], list[str]]:
    """(new lines of ``path``, messages, errors): each FROM without a digest (all of them
    with ``repin``) resolved. ``cache`` holds digests already looked up, by image."""
    lines = path.read_bytes().decode().splitlines(keepends=True)
    messages, errors = [], []
    for f in from_lines(lines):
        try:
            if "$" in f.image:
                raise PinError("names a build argument; pin it where the argument is set")
            ref = parse_reference(f.image)
            if ref.digest and not repin:
                continue
            if not ref.tag:
                raise PinError("has no tag; write the version tag to pin (name:tag)")
            key = (ref.host, ref.repository, ref.tag)
            if key not in cache:
                cache[key] = resolve(ref, timeout)
        except PinError as err:
            errors.append(f"{path}: {f.image}: {err}")
            continue
        pinned = f"{ref.name}:{ref.tag}@{cache[key]}"
        if pinned != f.image:
            line = lines[f.line]
            body = line.rstrip("\r\n")
            m = FROM_LINE.match(body)
            lines[f.line] = m.group(1) + pinned + m.group(3) + line[len(body):]
            messages.append(f"{path}: {f.image} -> {pinned}")
    return lines, messages, errors


def replace_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file in the same folder and os.replace, so
    a reader never sees half a file; the file keeps its mode."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as out:
            out.write(text)
        os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dockerfiles", nargs="+", type=Path)
    parser.add_argument("--check", action="store_true", help="no network: exit 1 if a FROM lacks a digest")
    parser.add_argument("--repin", action="store_true", help="re-resolve FROMs that already have a digest")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds for each network call")
    args = parser.parse_args(argv)

    missing = [f"{p}: no such file" for p in args.dockerfiles if not p.is_file()]
    if missing:
        print("\n".join(missing), file=sys.stderr)
        return 1
    if args.check:
        problems = [line for p in args.dockerfiles for line in unpinned(p)]
        if problems:
            print("\n".join(problems), file=sys.stderr)
            return 1
        print(f"{len(args.dockerfiles)} Dockerfile(s): every FROM is pinned by digest")
        return 0

    cache: dict = {}
    plans = {p: plan(p, args.repin, args.timeout, cache) for p in args.dockerfiles}
    errors = [e for _, _, errs in plans.values() for e in errs]
    if errors:  # nothing is written unless everything resolved
        print("\n".join(errors), file=sys.stderr)
        return 1
    for path, (lines, messages, _) in plans.items():
        if messages:
            replace_file(path, "".join(lines))
            print("\n".join(messages))
    if not any(messages for _, messages, _ in plans.values()):
        state = "every tag still has its pinned digest" if args.repin else "every FROM has a digest (--repin re-resolves them)"
        print(f"{len(plans)} Dockerfile(s): nothing to change: {state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
