"""Upload a compiled pipeline to a Kubeflow Pipelines backend and start or schedule it.

Credentials are resolved the way kfp resolves them: ``kfp.Client`` reads the host from
``--host`` or ``KF_PIPELINES_ENDPOINT``, IAP/OAuth client ids from its ``KF_PIPELINES_*``
variables and cookies from ``~/.config/kfp/context.json``; in a pod, a projected
service-account token (``KF_PIPELINES_SA_TOKEN_PATH``, default
``/var/run/secrets/kubeflow/pipelines/token``) is used when present; a bearer token
from a port-forward or a gateway can be passed in ``KF_PIPELINES_TOKEN``.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from typing import Any


def client(host: str | None, namespace: str | None):
    """A kfp.Client with the credentials kfp would find on its own."""
    import warnings

    import kfp
    from kfp.client import KF_PIPELINES_SA_TOKEN_ENV, KF_PIPELINES_SA_TOKEN_PATH
    from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials

    token_path = os.environ.get(KF_PIPELINES_SA_TOKEN_ENV, KF_PIPELINES_SA_TOKEN_PATH)
    kwargs: dict[str, Any] = {}
    if os.environ.get("KF_PIPELINES_TOKEN"):
        kwargs["existing_token"] = os.environ["KF_PIPELINES_TOKEN"]
    elif os.path.exists(token_path):
        kwargs["credentials"] = ServiceAccountTokenVolumeCredentials(token_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "only works with KFP >= 2.0.0-beta.2"
        return kfp.Client(host=host, namespace=namespace or "kubeflow", **kwargs)


def upload(c, package: str, name: str, namespace: str | None) -> tuple[str, str]:
    """Upload ``package`` as pipeline ``name`` (a new version when it exists); return (pipeline_id, version_id)."""
    with open(package, "rb") as fh:
        digest = hashlib.sha256(fh.read()).hexdigest()[:10]
    pipeline_id = c.get_pipeline_id(name)
    if pipeline_id is None:
        pipeline = c.upload_pipeline(package, pipeline_name=name, namespace=namespace)
        pipeline_id = pipeline.pipeline_id
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    version = c.upload_pipeline_version(package, pipeline_version_name=f"{name}-{stamp}-{digest}",
                                        pipeline_id=pipeline_id)
    return pipeline_id, version.pipeline_version_id


def submit(package: str, name: str, params: dict[str, Any], host: str | None, experiment: str,
           namespace: str | None = None, run_name: str | None = None, pipeline_root: str | None = None) -> Any:
    """Upload and start one run; returns the API's run object."""
    c = client(host, namespace)
    pipeline_id, version_id = upload(c, package, name, namespace)
    exp = c.create_experiment(experiment, namespace=namespace)
    return c.run_pipeline(experiment_id=exp.experiment_id, job_name=run_name or f"{name} {_now()}",
                          params=params, pipeline_id=pipeline_id, version_id=version_id,
                          pipeline_root=pipeline_root)


def schedule(package: str, name: str, params: dict[str, Any], cron: str, host: str | None, experiment: str,
             namespace: str | None = None, run_name: str | None = None, pipeline_root: str | None = None) -> Any:
    """Upload and create a recurring run on ``cron``; returns the API's recurring-run object."""
    c = client(host, namespace)
    pipeline_id, version_id = upload(c, package, name, namespace)
    exp = c.create_experiment(experiment, namespace=namespace)
    return c.create_recurring_run(experiment_id=exp.experiment_id, job_name=run_name or f"{name} (recurring)",
                                  cron_expression=kfp_cron(cron), params=params, pipeline_id=pipeline_id,
                                  version_id=version_id, pipeline_root=pipeline_root, max_concurrency=1,
                                  no_catchup=True)


def kfp_cron(expr: str) -> str:
    """KFP wants 6 fields (seconds first); a usual 5-field crontab line gets ``0`` seconds."""
    fields = expr.split()
    if len(fields) == 5:
        return "0 " + " ".join(fields)
    if len(fields) == 6:
        return " ".join(fields)
    raise ValueError(f"cron expression needs 5 or 6 fields, got {expr!r}")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
