"""A namespace-aware fake of the Kubeflow Pipelines v2beta1 REST API on loopback.

It answers the real ``kfp.Client`` (kfp 2.17) over HTTP and keeps the backend's rules, read
from kubeflow/pipelines at commit 7b70c7b95f6832772efd6fd0029a4024491a0f44 (2.17.0 era):

- ``backend/src/apiserver/model/pipeline.go``: pipelines are unique on (Name, Namespace)
  (``uniqueIndex:namespace_name``); ``name`` and ``display_name`` are both filter keys.
- ``backend/src/apiserver/model/pipeline_version.go``: versions are unique on (PipelineId, Name).
- ``backend/src/apiserver/model/experiment.go``: experiments are unique on (Name, Namespace);
  the v2beta1 ``display_name`` is the Name.
- ``backend/src/apiserver/resource/resource_manager.go``: ``ReplaceNamespace`` drops the
  namespace in single-user mode; ``CreatePipelineAndPipelineVersion`` (the upload) makes the
  first version with the pipeline's name; ``CreateExperiment`` refuses an empty namespace in
  multi-user mode; ``GetValidExperimentNamespacePair`` refuses a run or recurring run whose
  namespace differs from its experiment's, and an empty experiment id in multi-user mode.
- ``backend/src/apiserver/server/pipeline_server.go`` (``listPipelines``,
  ``canAccessPipeline``): a list is of ONE namespace (``""`` = the shared pipelines); reading
  shared pipelines needs no authorization, writing them needs access to the KFP system
  namespace (``kubeflow``); a namespaced pipeline needs access to its namespace.
- ``backend/src/apiserver/server/pipeline_upload_server.go``: ``POST /pipelines/upload``
  (``name``, ``namespace``, ``description`` query, ``uploadfile`` form part) answers
  AlreadyExists for a taken (name, namespace); ``upload_version`` takes the namespace of
  the pipeline (``FetchNamespaceFromPipelineId``).
- ``backend/src/apiserver/server/job_server.go``: recurring runs need a display name, are
  listed by experiment (its namespace) or by namespace, and have create/get/list/delete
  and ``:enable``/``:disable``; there is no update and display names are NOT unique (the
  backend allows duplicates, so idempotence is the client's job).
- ``resource_manager.IsAuthorized``: in multi-user mode a request without a user identity is
  Unauthenticated (HTTP 401) and one without access to the namespace PermissionDenied (403).
  grpc-gateway maps InvalidArgument/NotFound/AlreadyExists to 400/404/409.

The identity is the bearer token (what ``existing_token`` / a service-account token sends)
or the ``kubeflow-userid`` header (what Istio sets behind Dex, and what a cookie session
becomes); ``access`` maps an identity to the namespaces it may use.
"""

from __future__ import annotations

import datetime
import itertools
import json
import threading
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, unquote, urlparse

import yaml

from _loopback import LoopbackServer

__all__ = ["FakeKFP", "ApiError"]

SYSTEM_NAMESPACE = "kubeflow"
V2 = "/apis/v2beta1"


class ApiError(Exception):
    """An error the backend answers with (HTTP status, gRPC code name, message)."""

    CODES = {400: 3, 401: 16, 403: 7, 404: 5, 409: 6}

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _multipart_file(content_type: str, raw: bytes) -> bytes:
    """The ``uploadfile`` part of a multipart/form-data body."""
    boundary = content_type.split("boundary=", 1)[1].strip().strip('"').encode()
    for part in raw.split(b"--" + boundary):
        head, _, body = part.partition(b"\r\n\r\n")
        if b'name="uploadfile"' in head:
            return body[:-2] if body.endswith(b"\r\n") else body
    raise ApiError(400, "Failed to read the pipeline file: no uploadfile part")


class FakeKFP(LoopbackServer):
    """The server and its state. ``multi_user`` as the backend's MULTIUSER setting;
    ``access`` identity -> namespaces (``kubeflow`` among them = may write shared pipelines)."""

    def __init__(self, multi_user: bool = True, access: dict[str, set[str]] | None = None):
        self.multi_user = multi_user
        self.access = access or {}
        self.pipelines: dict[str, dict] = {}
        self.versions: dict[str, dict] = {}
        self.experiments: dict[str, dict] = {}
        self.runs: dict[str, dict] = {}
        self.recurring_runs: dict[str, dict] = {}
        self.calls: list[dict] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                self._handle("GET")

            def do_POST(self):
                self._handle("POST")

            def do_DELETE(self):
                self._handle("DELETE")

            def _handle(self, method):
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                call = {"method": method, "path": url.path,
                        "query": {k: v[0] for k, v in parse_qs(url.query).items()},
                        "headers": {k.lower(): v for k, v in self.headers.items()}, "raw": raw}
                try:
                    if raw and call["headers"].get("content-type", "").startswith("application/json"):
                        call["json"] = json.loads(raw)
                    with fake._lock:
                        fake.calls.append(call)
                        status, obj = 200, fake.answer(call)
                except ApiError as e:
                    status = e.status
                    obj = {"error": str(e), "code": ApiError.CODES.get(e.status, 2), "message": str(e), "details": []}
                body = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        super().__init__(Handler)

    # ------------------------------------------------------------------ rules

    def _id(self, kind: str) -> str:
        return f"{kind}-{next(self._ids)}"

    def _ns(self, namespace: str | None) -> str:
        """``ReplaceNamespace``: single-user mode has no namespaces."""
        return (namespace or "") if self.multi_user else ""

    def _identity(self, call: dict) -> str:
        auth = call["headers"].get("authorization", "")
        if auth.startswith("Bearer ") and auth[7:] in self.access:
            return auth[7:]
        user = call["headers"].get("kubeflow-userid", "")
        if user in self.access:
            return user
        raise ApiError(401, "Failed to check authorization. User identity is empty in the request header")

    def _authorize(self, call: dict, namespace: str, write: bool) -> None:
        """``canAccessPipeline`` / ``IsAuthorized``: shared ("") is readable by all, writable
        with access to the system namespace."""
        if not self.multi_user:
            return
        if namespace == "":
            if not write:
                return
            namespace = SYSTEM_NAMESPACE
        if namespace not in self.access.get(self._identity(call), set()):
            raise ApiError(403, f"PermissionDenied: no access to namespace {namespace}")

    def _experiment_namespace(self, call: dict, experiment_id: str, namespace: str) -> tuple[str, str]:
        """``GetValidExperimentNamespacePair``."""
        if not experiment_id:
            if self.multi_user:
                raise ApiError(400, "Experiment id can not be empty in multi-user mode")
            experiment_id = self._default_experiment()
        exp = self._get(self.experiments, experiment_id, "experiment")
        if namespace and namespace != exp["namespace"]:
            raise ApiError(400, f"Experiment {experiment_id} belongs to namespace '{exp['namespace']}' "
                                f"instead of '{namespace}'")
        return experiment_id, exp["namespace"]

    def _default_experiment(self) -> str:
        for e in self.experiments.values():
            if e["display_name"] == "Default" and e["namespace"] == "":
                return e["experiment_id"]
        eid = self._id("experiment")
        self.experiments[eid] = {"experiment_id": eid, "display_name": "Default", "namespace": "", "created_at": _now()}
        return eid

    @staticmethod
    def _get(table: dict, key: str, kind: str) -> dict:
        if key not in table:
            raise ApiError(404, f"ResourceNotFoundError: {kind} {key} not found")
        return table[key]

    @staticmethod
    def _filter(rows: list[dict], query: dict, keys: dict[str, str]) -> list[dict]:
        """The backend's filter (EQUALS only) on the model's ``APIToModelFieldMap`` keys."""
        if not query.get("filter"):
            return rows
        spec = json.loads(unquote(query["filter"]))
        for pred in spec.get("predicates", []):
            if pred["key"] not in keys:
                raise ApiError(400, f"no support for filtering on unrecognized field {pred['key']!r}")
            if pred.get("operation") not in ("EQUALS", 1):
                raise ApiError(400, "the fake supports EQUALS only")
            value = pred.get("stringValue", pred.get("string_value"))
            rows = [r for r in rows if r.get(keys[pred["key"]]) == value]
        return rows

    @staticmethod
    def _page(rows: list[dict], query: dict, field: str) -> dict:
        size = int(query.get("page_size") or 20)
        if size <= 0:
            raise ApiError(400, f"The page size should be greater than 0. Got {size}")
        start = int(query.get("page_token") or 0)
        page = rows[start:start + size]
        out: dict = {field: page, "total_size": len(rows)} if page else {"total_size": len(rows)}
        if start + size < len(rows):
            out["next_page_token"] = str(start + size)
        return out

    # ------------------------------------------------------------------ routes

    def answer(self, call: dict) -> dict:
        m, p, q = call["method"], call["path"], call["query"]
        if p == f"{V2}/healthz":
            return {"multi_user": self.multi_user}
        if p == f"{V2}/pipelines/upload" and m == "POST":
            return self.upload_pipeline(call)
        if p == f"{V2}/pipelines/upload_version" and m == "POST":
            return self.upload_version(call)
        if p == f"{V2}/pipelines" and m == "GET":
            ns = self._ns(q.get("namespace"))
            self._authorize(call, ns, write=False)
            rows = [x for x in self.pipelines.values() if x["namespace"] == ns]
            rows = self._filter(rows, q, {"name": "name", "display_name": "display_name", "pipeline_id": "pipeline_id"})
            return self._page(rows, q, "pipelines")
        if p.startswith(f"{V2}/pipelines/names/") and m == "GET":
            ns, name = self._ns(q.get("namespace")), unquote(p.rsplit("/", 1)[1])
            self._authorize(call, ns, write=False)
            for x in self.pipelines.values():
                if x["name"] == name and x["namespace"] == ns:
                    return x
            raise ApiError(404, f"Failed to get a pipeline named {name} in namespace {ns}")
        parts = p[len(V2) + 1:].split("/") if p.startswith(V2 + "/") else []
        if len(parts) >= 2 and parts[0] == "pipelines":
            pipe = self._get(self.pipelines, parts[1], "pipeline")
            if len(parts) == 2:
                self._authorize(call, pipe["namespace"], write=m != "GET")
                if m == "GET":
                    return pipe
                if m == "DELETE":
                    if any(v["pipeline_id"] == pipe["pipeline_id"] for v in self.versions.values()):
                        raise ApiError(400, "pipeline has versions: delete them first")
                    del self.pipelines[parts[1]]
                    return {}
            if len(parts) == 3 and parts[2] == "versions" and m == "GET":
                self._authorize(call, pipe["namespace"], write=False)
                rows = [v for v in self.versions.values() if v["pipeline_id"] == pipe["pipeline_id"]]
                rows = self._filter(rows, q, {"name": "name", "display_name": "display_name",
                                              "description": "description"})
                return self._page(rows, q, "pipeline_versions")
            if len(parts) == 4 and parts[2] == "versions":
                self._authorize(call, pipe["namespace"], write=m != "GET")
                v = self._get(self.versions, parts[3], "pipeline version")
                if m == "DELETE":
                    del self.versions[parts[3]]
                    return {}
                return v
        if p == f"{V2}/experiments":
            if m == "POST":
                return self.create_experiment(call)
            ns = self._ns(q.get("namespace"))
            self._authorize(call, ns, write=False)
            rows = [e for e in self.experiments.values() if e["namespace"] == ns]
            return self._page(self._filter(rows, q, {"display_name": "display_name", "name": "display_name"}),
                              q, "experiments")
        if len(parts) == 2 and parts[0] == "experiments":
            exp = self._get(self.experiments, parts[1], "experiment")
            self._authorize(call, exp["namespace"], write=m != "GET")
            if m == "DELETE":
                del self.experiments[parts[1]]
                return {}
            return exp
        if p == f"{V2}/runs" and m == "POST":
            return self.create_run(call, self.runs, "run")
        if p == f"{V2}/recurringruns" and m == "POST":
            return self.create_run(call, self.recurring_runs, "recurring_run")
        if p in (f"{V2}/runs", f"{V2}/recurringruns") and m == "GET":
            table, field = (self.runs, "runs") if p.endswith("/runs") else (self.recurring_runs, "recurringRuns")
            if q.get("experiment_id"):
                ns = self._get(self.experiments, q["experiment_id"], "experiment")["namespace"]
                rows = [r for r in table.values() if r["experiment_id"] == q["experiment_id"]]
            else:
                ns = self._ns(q.get("namespace"))
                rows = [r for r in table.values() if r["namespace"] == ns]
            self._authorize(call, ns, write=False)
            return self._page(self._filter(rows, q, {"display_name": "display_name", "name": "display_name"}),
                              q, field)
        if len(parts) == 2 and parts[0] in ("runs", "recurringruns"):
            table = self.runs if parts[0] == "runs" else self.recurring_runs
            key, _, verb = parts[1].partition(":")
            r = self._get(table, key, parts[0])
            self._authorize(call, r["namespace"], write=m != "GET")
            if m == "DELETE":
                del table[key]
                return {}
            if m == "POST" and verb in ("enable", "disable") and table is self.recurring_runs:
                r["mode"] = verb.upper()
                r["status"] = "ENABLED" if verb == "enable" else "DISABLED"
                return {}
            if m == "GET":
                return r
        raise ApiError(404, f"Not Found: {m} {p}")

    def upload_pipeline(self, call: dict) -> dict:
        q = call["query"]
        ns = self._ns(q.get("namespace"))
        self._authorize(call, ns, write=True)
        spec = _multipart_file(call["headers"]["content-type"], call["raw"])
        name = q.get("name") or q.get("display_name")
        if not name:
            raise ApiError(400, "pipeline's name cannot be empty")
        if any(x["name"] == name and x["namespace"] == ns for x in self.pipelines.values()):
            raise ApiError(409, f"AlreadyExistsError: Failed to create a new pipeline. The name {name} already "
                                f"exists. Please specify a new name")
        pid = self._id("pipeline")
        self.pipelines[pid] = {"pipeline_id": pid, "name": name, "display_name": q.get("display_name") or name,
                               "description": q.get("description", ""), "namespace": ns, "created_at": _now()}
        self._add_version(pid, name, spec, q.get("description", ""))
        return self.pipelines[pid]

    def upload_version(self, call: dict) -> dict:
        q = call["query"]
        pipe = self._get(self.pipelines, q.get("pipelineid", ""), "pipeline")
        self._authorize(call, pipe["namespace"], write=True)
        spec = _multipart_file(call["headers"]["content-type"], call["raw"])
        name = q.get("name") or q.get("display_name")
        if any(v["pipeline_id"] == pipe["pipeline_id"] and v["name"] == name for v in self.versions.values()):
            raise ApiError(409, f"AlreadyExistsError: Failed to create a new pipeline version. The name {name} "
                                f"already exists. Please specify a new name")
        return self._add_version(pipe["pipeline_id"], name, spec, q.get("description", ""))

    def _add_version(self, pid: str, name: str, spec: bytes, description: str) -> dict:
        docs = list(yaml.safe_load_all(spec))
        if not docs or "pipelineInfo" not in docs[0]:
            raise ApiError(400, "Failed to create a pipeline version due to template creation error")
        vid = self._id("version")
        self.versions[vid] = {"pipeline_id": pid, "pipeline_version_id": vid, "name": name, "display_name": name,
                              "description": description, "created_at": _now(), "pipeline_spec": docs[0]}
        return self.versions[vid]

    def create_experiment(self, call: dict) -> dict:
        body = call.get("json", {})
        ns = self._ns(body.get("namespace"))
        self._authorize(call, ns, write=True)
        if self.multi_user and not ns:
            raise ApiError(400, "Namespace cannot be empty")
        name = body.get("display_name", "")
        if any(e["display_name"] == name and e["namespace"] == ns for e in self.experiments.values()):
            raise ApiError(409, f"AlreadyExistsError: experiment {name} in namespace {ns!r}")
        eid = self._id("experiment")
        self.experiments[eid] = {"experiment_id": eid, "display_name": name, "namespace": ns,
                                 "description": body.get("description") or "", "created_at": _now(),
                                 "storage_state": "AVAILABLE"}
        return self.experiments[eid]

    def create_run(self, call: dict, table: dict, kind: str) -> dict:
        body = call.get("json", {})
        if not body.get("display_name"):
            raise ApiError(400, f"The {kind} name is empty. Please specify a valid name")
        eid, ns = self._experiment_namespace(call, body.get("experiment_id", ""), self._ns(body.get("namespace")))
        self._authorize(call, ns, write=True)
        ref = body.get("pipeline_version_reference") or {}
        version = self._get(self.versions, ref.get("pipeline_version_id", ""), "pipeline version")
        if ref.get("pipeline_id") and ref["pipeline_id"] != version["pipeline_id"]:
            raise ApiError(400, "pipeline version does not belong to the pipeline")
        pipe_ns = self.pipelines[version["pipeline_id"]]["namespace"]
        if pipe_ns not in ("", ns):
            raise ApiError(403, f"pipeline of namespace {pipe_ns} cannot run in namespace {ns}")
        rid = self._id(kind.replace("_", "-"))
        row = {**body, f"{kind}_id": rid, "experiment_id": eid, "namespace": ns, "created_at": _now()}
        if kind == "run":
            row["state"] = "PENDING"
        else:
            row["status"] = "ENABLED" if body.get("mode", "ENABLE") == "ENABLE" else "DISABLED"
        table[rid] = row
        return row
