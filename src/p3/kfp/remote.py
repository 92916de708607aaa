"""Upload a compiled pipeline to a Kubeflow Pipelines backend and start, schedule or unschedule it.

What the backend expects (kubeflow/pipelines backend/src/apiserver, see tests/_fx_kfp_api.py):
a pipeline is unique on (name, namespace) and a list is of one namespace (``""`` = shared), so
the pipeline is looked up in the scope it is uploaded to: ``namespace`` when given (a profile
namespace), shared otherwise. A version is added only when the compiled YAML changed: each
version carries ``content sha256:<digest>`` as its description (the upload gives the first
version the pipeline's description), found again with a ``description`` EQUALS filter.
Experiments are (name, namespace) unique too; runs and recurring runs take the namespace of
their experiment. Recurring runs have no update call and their names are not unique, so a
schedule of the same name is replaced (created, then the old one deleted) unless identical.

Connection, the way ``kfp.Client`` documents it: the host is ``--host`` or
``KF_PIPELINES_ENDPOINT``; in a pod without either it is the in-cluster service
``ml-pipeline.kubeflow.svc.cluster.local:8888`` (the KFP namespace, not the user's). Credentials:
``KF_PIPELINES_TOKEN`` as ``existing_token`` (a bearer token from a gateway or ``kubectl create
token``), else the projected service-account token at ``KF_PIPELINES_SA_TOKEN_PATH`` (default
``/var/run/secrets/kubeflow/pipelines/token``), and ``KF_PIPELINES_COOKIES`` (e.g.
``authservice_session=…`` from a browser session behind Dex) as ``cookies``. The user namespace
is passed on every call instead of being written to ``~/.config/kfp/context.json``.

Every failure the user can fix (no host, host unreachable, 401, 403, no such namespace, a
multi-user backend without ``--namespace``) is one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import urllib.error
import urllib.request
from typing import Any, Iterator

IN_CLUSTER_HOST = "http://ml-pipeline.kubeflow.svc.cluster.local:8888"
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 120.0
MAX_CONCURRENCY = (1, 10)  # the backend refuses others (server/api_converter.go toModelJob)


@dataclasses.dataclass(frozen=True)
class Target:
    """Where to: the API endpoint, the user namespace (None = shared / single-user) and experiment."""

    host: str
    namespace: str | None
    experiment: str


@dataclasses.dataclass(frozen=True)
class Schedule:
    """A recurring run: its name, KFP's 6-field cron, how many may overlap, whether missed ones run."""

    name: str
    cron: str
    max_concurrency: int = 1
    catchup: bool = False


def fail(msg: str) -> SystemExit:
    return SystemExit(f"p3: {msg}")


# ----------------------------------------------------------------------------- validation (no network)


CRON_RANGES = [(0, 59), (0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]  # sec min hour dom month dow
CRON_NAMES = {4: "JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC", 5: "SUN MON TUE WED THU FRI SAT"}
CRON_DESCRIPTORS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")


def kfp_cron(expr: str) -> str:
    """KFP's cron (robfig/cron v1: seconds first, 6 fields) from a 5- or 6-field line; each field checked.

    A usual 5-field crontab line gets ``0`` seconds. Raises SystemExit with one line on a bad one."""
    expr = " ".join(expr.split())
    if expr in CRON_DESCRIPTORS or re.fullmatch(r"@every \d+[smh]", expr):
        return expr
    fields = expr.split()
    if len(fields) == 5:
        fields = ["0", *fields]
    if len(fields) != 6:
        raise fail(f"--schedule {expr!r}: a cron expression has 5 fields (min hour day month weekday) or 6 "
                   f"(seconds first), got {len(fields)}")
    for i, field in enumerate(fields):
        lo, hi = CRON_RANGES[i]
        names = CRON_NAMES.get(i, "").split()
        for part in field.split(","):
            base, _, step = part.partition("/")
            if step and not (step.isdigit() and int(step) > 0):
                raise fail(f"--schedule {expr!r}: bad step {part!r}")
            if base in ("*", "?"):
                continue
            for v in base.split("-", 1):
                n = names.index(v.upper()) + (1 if i == 4 else 0) if v.upper() in names else (int(v) if v.isdigit() else None)
                if n is None or not lo <= n <= hi:
                    raise fail(f"--schedule {expr!r}: {v!r} is not a value from {lo} to {hi} in field {i + 1} of 6")
    return " ".join(fields)


def schedule_of(name: str | None, cron: str, max_concurrency: int = 1, catchup: bool = False) -> Schedule:
    """A checked Schedule, or SystemExit with one line."""
    if not name or not name.strip():
        raise fail("a recurring run needs a name (--name)")
    lo, hi = MAX_CONCURRENCY
    if not lo <= max_concurrency <= hi:
        raise fail(f"--max-concurrency {max_concurrency}: KFP allows {lo} to {hi}")
    return Schedule(name=name.strip(), cron=kfp_cron(cron), max_concurrency=max_concurrency, catchup=catchup)


def target_of(host: str | None, namespace: str | None, experiment: str) -> Target:
    """The endpoint: --host, $KF_PIPELINES_ENDPOINT, or the in-cluster service in a pod."""
    host = host or os.environ.get("KF_PIPELINES_ENDPOINT")
    if not host:
        if not os.environ.get("KUBERNETES_SERVICE_HOST"):
            raise fail("no KFP host: give --host URL (e.g. http://localhost:8080 after "
                       "`kubectl -n kubeflow port-forward svc/ml-pipeline-ui 8080:80`) or set KF_PIPELINES_ENDPOINT")
        host = IN_CLUSTER_HOST
    if not host.startswith(("http://", "https://")):
        host = "https://" + host  # what kfp.Client does too
    if namespace is not None and not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", namespace):
        raise fail(f"--namespace {namespace!r} is not a Kubernetes namespace name")
    if not experiment.strip():
        raise fail("--experiment must not be empty")
    return Target(host=host.rstrip("/"), namespace=namespace, experiment=experiment)


# ----------------------------------------------------------------------------- connection


def _credentials() -> dict[str, Any]:
    from kfp.client import KF_PIPELINES_SA_TOKEN_ENV, KF_PIPELINES_SA_TOKEN_PATH
    from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials

    kwargs: dict[str, Any] = {}
    token_path = os.environ.get(KF_PIPELINES_SA_TOKEN_ENV, KF_PIPELINES_SA_TOKEN_PATH)
    if os.environ.get("KF_PIPELINES_TOKEN"):
        kwargs["existing_token"] = os.environ["KF_PIPELINES_TOKEN"]
    elif os.path.exists(token_path):
        kwargs["credentials"] = ServiceAccountTokenVolumeCredentials(token_path)
    if os.environ.get("KF_PIPELINES_COOKIES"):
        kwargs["cookies"] = os.environ["KF_PIPELINES_COOKIES"]
    return kwargs


def _probe(t: Target, kwargs: dict[str, Any]) -> bool:
    """GET healthz with a timeout (kfp.Client's own check retries 5 times, 5 s apart, with a
    traceback); returns whether the backend is multi-user."""
    headers = {}
    if "existing_token" in kwargs:
        headers["Authorization"] = f"Bearer {kwargs['existing_token']}"
    elif "credentials" in kwargs:
        with open(kwargs["credentials"]._token_path) as fh:
            headers["Authorization"] = f"Bearer {fh.read().strip()}"
    if "cookies" in kwargs:
        headers["Cookie"] = kwargs["cookies"]
    req = urllib.request.Request(f"{t.host}/apis/v2beta1/healthz", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=CONNECT_TIMEOUT_S) as resp:
            body = resp.read()
    except urllib.error.HTTPError as e:
        raise fail(f"KFP at {t.host} answered {e.code} {e.reason} to healthz{_auth_hint(e.code)}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise fail(f"cannot reach KFP at {t.host}: {reason}") from None
    try:
        return bool(json.loads(body).get("multi_user"))
    except ValueError:
        # a login page (Dex) instead of the API: the session cookie or token is missing
        raise fail(f"{t.host} did not answer as the KFP API (a login page?): set KF_PIPELINES_TOKEN or "
                   f"KF_PIPELINES_COOKIES") from None


def _auth_hint(status: int) -> str:
    return {401: ": not authenticated (set KF_PIPELINES_TOKEN, KF_PIPELINES_COOKIES, or run in a pod with a "
                 "pipelines service-account token)",
            403: ": permission denied"}.get(status, "")


def connect(t: Target):
    """A kfp.Client for ``t`` (probed first), every call with a timeout."""
    import warnings

    import kfp
    import urllib3

    kwargs = _credentials()
    multi_user = _probe(t, kwargs)
    if multi_user and not t.namespace:
        raise fail(f"KFP at {t.host} is multi-user: give --namespace (your profile namespace)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "only works with KFP >= 2.0.0-beta.2"
        # an explicit host: kfp neither derives ml-pipeline.<namespace>.svc from the namespace nor
        # asks healthz again; the namespace given sets the client's default user namespace only
        c = kfp.Client(host=t.host, namespace=t.namespace or "kubeflow", **kwargs)
    pool = c._pipelines_api.api_client.rest_client.pool_manager  # kfp has no timeout setting
    pool.connection_pool_kw["timeout"] = urllib3.Timeout(connect=CONNECT_TIMEOUT_S, read=READ_TIMEOUT_S)
    pool.connection_pool_kw["retries"] = urllib3.Retry(total=2, connect=2, read=0, redirect=0)
    return c


@contextlib.contextmanager
def api_errors(t: Target) -> Iterator[None]:
    """API errors as one line naming the host and namespace."""
    import kfp_server_api
    import urllib3

    where = f"KFP at {t.host}" + (f" (namespace {t.namespace})" if t.namespace else "")
    try:
        yield
    except kfp_server_api.ApiException as e:
        detail = ""
        with contextlib.suppress(Exception):
            detail = json.loads(e.body).get("message", "")
        detail = " ".join(str(detail or e.reason).split())[:300]
        raise fail(f"{where} answered {e.status}: {detail}{_auth_hint(e.status)}") from None
    except (urllib3.exceptions.HTTPError, OSError) as e:
        raise fail(f"cannot reach {where}: {e}") from None


# ----------------------------------------------------------------------------- resources


def _equals(key: str, value: str) -> str:
    return json.dumps({"predicates": [{"operation": "EQUALS", "key": key, "stringValue": value}]})


def content_digest(package: str) -> str:
    with open(package, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def ensure_pipeline(c, package: str, name: str, namespace: str | None) -> tuple[str, str]:
    """(pipeline_id, version_id): the pipeline ``name`` in its scope, with a version of this content."""
    import kfp_server_api

    digest = content_digest(package)
    tag = f"content sha256:{digest}"

    def find_pipeline() -> str | None:
        found = c.list_pipelines(filter=_equals("name", name), namespace=namespace, page_size=2).pipelines or []
        return found[0].pipeline_id if found else None

    def find_version(pipeline_id: str) -> str | None:
        found = c.list_pipeline_versions(pipeline_id, filter=_equals("description", tag), page_size=1)
        return found.pipeline_versions[0].pipeline_version_id if found.pipeline_versions else None

    pipeline_id = find_pipeline()
    if pipeline_id is None:
        try:
            pipeline_id = c.upload_pipeline(package, pipeline_name=name, description=tag,
                                            namespace=namespace).pipeline_id
        except kfp_server_api.ApiException as e:
            if e.status != 409:  # 409: another submit created it meanwhile
                raise
            pipeline_id = find_pipeline()
    version_id = find_version(pipeline_id)
    if version_id is None:
        try:
            version_id = c.upload_pipeline_version(package, pipeline_version_name=f"{name}-{digest[:12]}",
                                                   pipeline_id=pipeline_id, description=tag).pipeline_version_id
        except kfp_server_api.ApiException as e:
            if e.status != 409:
                raise
            version_id = find_version(pipeline_id)
    return pipeline_id, version_id


def experiment_id(c, t: Target) -> str:
    """The experiment ``t.experiment`` in the user's namespace, created when missing."""
    return c.create_experiment(t.experiment, namespace=t.namespace).experiment_id


def recurring_runs_named(c, exp_id: str, name: str) -> list:
    out, token = [], ""
    while True:
        page = c.list_recurring_runs(experiment_id=exp_id, filter=_equals("display_name", name), page_size=100,
                                     page_token=token)
        out += page.recurring_runs or []
        token = page.next_page_token
        if not token:
            return out


def _same_schedule(job, s: Schedule, pipeline_id: str, version_id: str, params: dict, pipeline_root: str | None) -> bool:
    ref = job.pipeline_version_reference
    rc = job.runtime_config
    return (ref is not None and ref.pipeline_id == pipeline_id and ref.pipeline_version_id == version_id
            and job.trigger.cron_schedule is not None and job.trigger.cron_schedule.cron == s.cron
            and int(job.max_concurrency or 0) == s.max_concurrency and bool(job.no_catchup) == (not s.catchup)
            and ((rc.parameters if rc else None) or {}) == params
            and ((rc.pipeline_root if rc else None) or None) == (pipeline_root or None)
            and job.status != "DISABLED")


# ----------------------------------------------------------------------------- commands


def submit(package: str, name: str, params: dict[str, Any], host: str | None, experiment: str,
           namespace: str | None = None, run_name: str | None = None, pipeline_root: str | None = None) -> Any:
    """Upload (or reuse) and start one run; returns the API's run object."""
    t = target_of(host, namespace, experiment)
    c = connect(t)
    with api_errors(t):
        pipeline_id, version_id = ensure_pipeline(c, package, name, namespace)
        exp = experiment_id(c, t)
        return c.run_pipeline(experiment_id=exp, job_name=run_name or f"{name} {_now()}", params=params,
                              pipeline_id=pipeline_id, version_id=version_id, pipeline_root=pipeline_root)


def schedule(package: str, name: str, params: dict[str, Any], cron: str, host: str | None, experiment: str,
             namespace: str | None = None, run_name: str | None = None, pipeline_root: str | None = None,
             max_concurrency: int = 1, catchup: bool = False) -> Any:
    """Create the recurring run ``run_name`` (default ``<name> (recurring)``) in the experiment, or
    replace the one of that name when anything differs; returns the API's recurring-run object."""
    s = schedule_of(run_name or f"{name} (recurring)", cron, max_concurrency, catchup)
    t = target_of(host, namespace, experiment)
    c = connect(t)
    with api_errors(t):
        pipeline_id, version_id = ensure_pipeline(c, package, name, namespace)
        exp = experiment_id(c, t)
        old = recurring_runs_named(c, exp, s.name)
        keep = next((j for j in old if _same_schedule(j, s, pipeline_id, version_id, params, pipeline_root)), None)
        job = keep or c.create_recurring_run(
            experiment_id=exp, job_name=s.name, cron_expression=s.cron, params=params, pipeline_id=pipeline_id,
            version_id=version_id, pipeline_root=pipeline_root, max_concurrency=s.max_concurrency,
            no_catchup=not s.catchup, enabled=True)
        for j in old:  # after the new one exists: never a moment without the schedule
            if j.recurring_run_id != job.recurring_run_id:
                c.delete_recurring_run(j.recurring_run_id)
        if keep is not None:
            print(f"recurring run {s.name!r} unchanged")
        elif old:
            print(f"recurring run {s.name!r} replaced ({len(old)} old one(s) deleted)")
        return job


def unschedule(name: str, host: str | None, experiment: str, namespace: str | None = None) -> int:
    """Delete every recurring run called ``name`` in the experiment; returns how many."""
    if not name or not name.strip():
        raise fail("--unschedule needs the recurring run's name")
    t = target_of(host, namespace, experiment)
    c = connect(t)
    with api_errors(t):
        found = c.list_experiments(filter=_equals("display_name", t.experiment), namespace=t.namespace,
                                   page_size=1).experiments
        if not found:
            return 0
        old = recurring_runs_named(c, found[0].experiment_id, name.strip())
        for j in old:
            c.delete_recurring_run(j.recurring_run_id)
        return len(old)


def _now() -> str:
    import datetime

    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
