# p3-base: the CPU image. Runs prepare, select and report, and every step of the
# tiny preset. Build from the repository root:
#   docker build -f images/p3-base.Dockerfile -t ghcr.io/p3-kubeflow/p3-base:0.1.0 .
# Base pinned by digest (python:3.11.10-slim-bookworm as recorded in several public
# repositories; not re-resolved from here, which has no registry access).
FROM python:3.11.10-slim-bookworm@sha256:840e180ebcc6e5c8efab209c43f5e40fd2af98cb49db5c7103c90539c56bb30e

# The CPU build of torch first, pinned, so that installing the project cannot pull
# multi-GB CUDA wheels into a CPU image.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

# Any UID (OpenShift's random ones included): HOME and every cache point into
# world-writable directories, USER/LOGNAME spare tools a passwd lookup of a UID
# that has no entry. /cache is the model-cache PVC's mount point.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/home/p3 \
    USER=p3 \
    LOGNAME=p3 \
    XDG_CACHE_HOME=/home/p3/.cache \
    MPLCONFIGDIR=/home/p3/.cache/matplotlib \
    HF_HOME=/cache/huggingface \
    P3_PROGRESS=0

# bubblewrap: the APPS sandbox's full isolation (user, network, pid, mount namespaces);
# grading refuses to run programs without it unless --allow-weak-isolation.
RUN apt-get update && apt-get install -y --no-install-recommends bubblewrap \
    && rm -rf /var/lib/apt/lists/*

RUN pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"

# Dependencies in their own layer, at the versions images/constraints.txt records:
# a change to src/ keeps this layer.
WORKDIR /opt/p3
COPY pyproject.toml images/constraints.txt images/lock.py ./
RUN python lock.py --requirements pyproject.toml > requirements.txt \
    && pip install --constraint constraints.txt --requirement requirements.txt

# Only the package, without dependencies (installed above).
COPY README.md ./
COPY src/ src/
RUN pip install --no-deps . && python -c "import p3, p3.backends, p3.verify, p3.sandbox, p3.kfp.components, p3.kfp"

RUN mkdir -p /home/p3 /cache && chmod 1777 /home/p3 /cache
# Non-root by number (runAsNonRoot can check it); nothing depends on this UID.
USER 1000
WORKDIR /home/p3
