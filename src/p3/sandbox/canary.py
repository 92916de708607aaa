"""The isolation level is proven, not assumed: a canary program tries what a hostile one
would, and the level is the one its findings allow."""

from __future__ import annotations

# The canary: what a hostile program would try first. Each finding is True when the
# program reached it (the level is then weaker than its name promises).
CANARY = """
import json, os, socket
def holds(path, want):
    try:
        with open(path, "rb") as fh:
            return fh.read() == want
    except OSError:
        return False
found = {{"other_uid_file": holds({secret!r}, {token!r}), "host_tmp": holds({visible!r}, {token!r}),
         "parent_cmdline": holds("/proc/{grader}/cmdline", {cmdline!r})}}
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=1).close()
    found["network"] = True
except OSError:
    found["network"] = False
try:
    with open({written!r}, "w") as fh:
        fh.write("x")
except OSError:
    pass
print(json.dumps(found))
"""
CANARY_CHECKS = {
    "network": "reached a server on the host's loopback (the host's network)",
    "other_uid_file": "read a file only the grader's uid may read (it runs as the grader's uid)",
    "parent_cmdline": "read the grader's command line in /proc (where paths to the tests are)",
    "host_tmp": "saw or wrote the host's temp folder (where problem tables and KFP artifacts lie)",
}


def proven_level(mechanism: str, found: dict) -> str:
    """The level the canary's findings prove, never above the mechanism's own: ``bwrap``
    when it reached nothing; ``unshare`` when it had neither network nor another uid's
    files; else ``none``."""
    if mechanism == "bwrap" and not any(found[k] for k in CANARY_CHECKS):
        return "bwrap"
    if mechanism in ("bwrap", "unshare") and not (found["network"] or found["other_uid_file"]):
        return "unshare"
    return "none"


def describe_findings(findings: dict) -> str:
    reached = [CANARY_CHECKS[k] for k in CANARY_CHECKS if findings.get(k)]
    text = ("the canary program " + "; ".join(reached)) if reached else \
        "the canary program reached no network, no other uid's file, no parent command line, no host temp folder"
    missing = findings.get("unavailable") or {}
    return text + "".join(f"; {k} unavailable: {v}" for k, v in missing.items())


def weak_isolation_message(level: str, findings: dict) -> str:
    """The one error of a grader that refuses to run programs below full isolation."""
    why = {"unshare": "programs see the host's files wherever permissions allow (no mount namespace of their own)",
           "none": "programs share the host's network, processes and files"}[level]
    return (f"refusing to grade APPS programs: sandbox isolation proven here is '{level}', not 'bwrap': {why}; "
            f"{describe_findings(findings)}. A program could read the expected outputs and pass. "
            "For full isolation install bubblewrap (apt-get install bubblewrap; `make install` does it as root) "
            "and allow user namespaces (in Kubernetes: the sandbox-isolation component, docs/security.md); "
            f"or pass --allow-weak-isolation to grade at level '{level}' anyway (recorded in the results)")
