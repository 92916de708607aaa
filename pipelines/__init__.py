"""The P3 pipelines: one builder (builder.py), two entry scripts (p3_math.py,
p3_apps.py), the shared command line (entry.py), the local runner (localrun.py) and
the KFP API client side (remote.py)."""
