# p3-base: the CPU image. Runs prepare, select and report, and every step of the
# tiny preset. Build from the repository root:
#   docker build -f images/p3-base.Dockerfile -t ghcr.io/p3-kubeflow/p3-base:0.1.0 .
FROM python:3.11.10-slim-bookworm

# The CPU build of torch first, pinned, so that installing the project cannot pull
# multi-GB CUDA wheels into a CPU image.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/cache/huggingface \
    P3_PROGRESS=0

# bubblewrap: the APPS sandbox's full isolation (user, network, pid, mount namespaces);
# grading refuses to run programs without it unless --allow-weak-isolation.
RUN apt-get update && apt-get install -y --no-install-recommends bubblewrap \
    && rm -rf /var/lib/apt/lists/*

RUN pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"

# Only what the package needs, so that a change to tests or docs keeps the layers.
WORKDIR /opt/p3
COPY pyproject.toml README.md ./
COPY src/ src/
RUN pip install . && python -c "import p3, p3.backends, p3.verify, p3.kfp.components, p3.kfp"

# Non-root: the cluster runs these pods with runAsNonRoot, and the APPS sandbox
# expects to run as an ordinary user. /cache is the model-cache PVC's mount point.
RUN useradd --uid 1000 --create-home --shell /usr/sbin/nologin p3 \
    && mkdir -p /cache && chown p3:p3 /cache
USER 1000:1000
WORKDIR /home/p3
