"""Default container images of the components, one tag for the whole project.

The tags are what ``make images`` builds (images/*.Dockerfile) and what the compiled
pipelines default to; every pipeline takes them as parameters, so a cluster can point
at its own registry without recompiling.
"""

REGISTRY = "ghcr.io/p3-kubeflow"
TAG = "0.1.0"  # = the project version in pyproject.toml (a test keeps them equal)

BASE = f"{REGISTRY}/p3-base:{TAG}"  # CPU: prepare, shard, select, report, tiny preset
VLLM = f"{REGISTRY}/p3-vllm:{TAG}"  # GPU inference: scorer, evaluator, embedder
TRAIN = f"{REGISTRY}/p3-train:{TAG}"  # GPU training: trainer

# Dockerfile per image name, relative to the repository root (`make images` builds each; a test keeps them in step).
DOCKERFILES = {
    "p3-base": "images/p3-base.Dockerfile",
    "p3-vllm": "images/p3-vllm.Dockerfile",
    "p3-train": "images/p3-train.Dockerfile",
}
