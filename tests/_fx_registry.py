"""A container registry on loopback that keeps the rules images/pin_digests.py relies on,
as the sources state them:

- Token authentication, Docker "Registry authentication"
  (https://docs.docker.com/reference/api/registry/auth/; distribution/distribution
  ``docs/spec/auth/token.md``): a ``/v2/`` request without a valid token is answered ``401``
  with ``WWW-Authenticate: Bearer realm="<url>/token",service="<service>",scope="repository:<name>:pull"``;
  ``GET /token?service=…&scope=repository:<name>:pull`` issues a token for that repository
  only, in ``token`` (or only in its OAuth 2.0 alias ``access_token``).
- Manifests, OCI distribution spec v1.1 ("Pulling manifests", "Checking if content exists
  in the registry"): ``HEAD``/``GET /v2/<name>/manifests/<tag-or-digest>`` answer ``200``
  with ``Content-Type``, ``Content-Length`` and ``Docker-Content-Digest`` (the sha256 of the
  bytes served), ``404`` with ``MANIFEST_UNKNOWN`` for an unknown tag and ``NAME_UNKNOWN``
  for an unknown repository. ``digest_header=False`` is a registry of an earlier spec
  version, which omits the header on ``HEAD``.
- Content negotiation, distribution ``registry/handlers/manifests.go``: an OCI index whose
  type the ``Accept`` header lacks is ``404 MANIFEST_UNKNOWN`` ("OCI index found, but accept
  header does not support OCI indexes"); a Docker manifest list whose type it lacks,
  fetched by tag, is answered with the list's linux/amd64 manifest
  (``docs/spec/manifest-v2-2.md``, "Backward compatibility").
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlparse

from _loopback import LoopbackServer

__all__ = ["FakeRegistry", "OCI_INDEX", "DOCKER_LIST", "OCI_MANIFEST", "DOCKER_MANIFEST"]

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
SERVICE = "fake-registry.test"


def _bytes(obj: dict) -> bytes:
    return json.dumps(obj, indent=3).encode()


def _digest(raw: bytes) -> str:
    return "sha256:" + hashlib.sha256(raw).hexdigest()


class FakeRegistry(LoopbackServer):
    """``with FakeRegistry() as reg:`` serves ``reg.host`` (127.0.0.1:port) with two
    multi-platform images: ``library/python:3.11.10-slim-bookworm`` (a Docker manifest list)
    and ``vllm/vllm-openai:v0.33.0`` (an OCI index). ``reg.calls`` records every request."""

    def __init__(self, *, digest_header: bool = True, access_token_only: bool = False, moved_to: str = ""):
        self.digest_header = digest_header
        self.access_token_only = access_token_only
        self.moved_to = moved_to  # manifests answered "307 Temporary Redirect" to this URL
        self.manifests: dict[str, tuple[str, bytes]] = {}  # digest -> (media type, bytes)
        self.tags: dict[tuple[str, str], str] = {}  # (repository, tag) -> digest
        self.tokens: dict[str, str] = {}  # token -> the repository it may pull
        self.calls: list[dict] = []
        self._lock = threading.Lock()
        self.push_multiplatform("library/python", "3.11.10-slim-bookworm", DOCKER_LIST, DOCKER_MANIFEST)
        self.push_multiplatform("vllm/vllm-openai", "v0.33.0", OCI_INDEX, OCI_MANIFEST)

        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self._handle("HEAD")

            def do_GET(self):
                self._handle("GET")

            def _handle(self, method):
                url = urlparse(self.path)
                call = {"method": method, "path": url.path,
                        "query": {k: v[0] for k, v in parse_qs(url.query).items()},
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "accept": [t.split(";")[0].strip() for h in self.headers.get_all("Accept", [])
                                   for t in h.split(",") if t.strip()]}
                with fake._lock:
                    fake.calls.append(call)
                    status, headers, body = fake.answer(call)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if method == "GET":
                    self.wfile.write(body)

        super().__init__(Handler)

    # ------------------------------------------------------------------ content

    def push_multiplatform(self, repository: str, tag: str, index_type: str, manifest_type: str) -> None:
        """An index of a linux/amd64 and a linux/arm64 manifest, tagged ``tag``."""
        children, build = [], len(self.manifests)  # a new build has new content
        for arch in ("amd64", "arm64"):
            config = _digest(f"{repository}:{tag}:{arch}:{build}".encode())
            raw = _bytes({"schemaVersion": 2, "mediaType": manifest_type,
                          "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": 7,
                                     "digest": config},
                          "layers": []})
            self.manifests[_digest(raw)] = (manifest_type, raw)
            children.append({"mediaType": manifest_type, "size": len(raw), "digest": _digest(raw),
                             "platform": {"architecture": arch, "os": "linux"}})
        raw = _bytes({"schemaVersion": 2, "mediaType": index_type, "manifests": children})
        self.manifests[_digest(raw)] = (index_type, raw)
        self.tags[(repository, tag)] = _digest(raw)

    def index_digest(self, repository: str, tag: str) -> str:
        return self.tags[(repository, tag)]

    def amd64_digest(self, repository: str, tag: str) -> str:
        _, raw = self.manifests[self.tags[(repository, tag)]]
        return next(m["digest"] for m in json.loads(raw)["manifests"] if m["platform"]["architecture"] == "amd64")

    def retag(self, repository: str, tag: str) -> None:
        """The tag moved to new content (a rebuilt base), as tags do."""
        _, raw = self.manifests[self.tags[(repository, tag)]]
        index = json.loads(raw)
        self.push_multiplatform(repository, tag, index["mediaType"], index["manifests"][0]["mediaType"])

    # ------------------------------------------------------------------ rules

    def answer(self, call: dict) -> tuple[int, dict[str, str], bytes]:
        if call["path"] == "/token":
            return self._token(call["query"])
        parts = call["path"].split("/manifests/")
        if not call["path"].startswith("/v2/") or len(parts) != 2:
            return self._error(404, "NAME_UNKNOWN", "no such endpoint")
        repository, reference = parts[0][len("/v2/"):], parts[1]
        auth = call["headers"].get("authorization", "")
        if not auth.startswith("Bearer ") or self.tokens.get(auth[7:]) != repository:
            challenge = (f'Bearer realm="{self.url}/token",service="{SERVICE}",'
                         f'scope="repository:{repository}:pull"')
            status, headers, body = self._error(401, "UNAUTHORIZED", "authentication required")
            return status, {**headers, "WWW-Authenticate": challenge}, body
        if self.moved_to:  # a registry behind a CDN or a moved repository (OCI distribution spec: clients may be redirected)
            return 307, {"Location": f"{self.moved_to}/v2/{repository}/manifests/{reference}"}, b""
        if not any(repo == repository for repo, _ in self.tags):
            return self._error(404, "NAME_UNKNOWN", "repository name not known to registry")
        by_tag = not reference.startswith("sha256:")
        digest = self.tags.get((repository, reference)) if by_tag else reference
        if digest not in self.manifests:
            return self._error(404, "MANIFEST_UNKNOWN", "manifest unknown")
        media_type, raw = self.manifests[digest]
        accept = call["accept"]
        if media_type == OCI_INDEX and OCI_INDEX not in accept:
            return self._error(404, "MANIFEST_UNKNOWN", "OCI index found, but accept header does not support OCI indexes")
        if media_type == DOCKER_LIST and DOCKER_LIST not in accept and by_tag:
            digest = self.amd64_digest(repository, reference)
            media_type, raw = self.manifests[digest]
            if media_type not in accept:
                return self._error(404, "MANIFEST_UNKNOWN", "manifest unknown")
        headers = {"Content-Type": media_type}
        if self.digest_header or call["method"] == "GET":
            headers["Docker-Content-Digest"] = digest
        return 200, headers, raw

    def _token(self, query: dict) -> tuple[int, dict[str, str], bytes]:
        scope = query.get("scope", "")
        if query.get("service") != SERVICE or not (scope.startswith("repository:") and scope.endswith(":pull")):
            return self._error(400, "DENIED", "service or scope not valid")
        token = secrets.token_hex(8)
        self.tokens[token] = scope[len("repository:"):-len(":pull")]
        body = {"access_token": token} if self.access_token_only else {"token": token, "access_token": token}
        return 200, {"Content-Type": "application/json"}, json.dumps({**body, "expires_in": 300}).encode()

    @staticmethod
    def _error(status: int, code: str, message: str) -> tuple[int, dict[str, str], bytes]:
        body = json.dumps({"errors": [{"code": code, "message": message, "detail": None}]}).encode()
        return status, {"Content-Type": "application/json"}, body
