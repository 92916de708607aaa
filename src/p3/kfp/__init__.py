"""P3 as Kubeflow Pipelines: the components (components/, one per module), the one
pipeline builder (builder.py), the command line shared by ``pipelines/p3_math.py`` and
``pipelines/p3_apps.py`` (entry.py, also ``python -m p3.kfp``), the local runner
(localrun.py) and the KFP API client side (remote.py)."""
