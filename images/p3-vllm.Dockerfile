# p3-vllm: the rollout scorer and the evaluator on GPUs (vLLM backend).
# From the official vLLM image, pinned; the project is installed on top without
# touching the image's torch/CUDA stack. Build from the repository root:
#   docker build -f images/p3-vllm.Dockerfile -t ghcr.io/p3-kubeflow/p3-vllm:0.1.0 .
# Pinned by tag only, digest pending: run `make pin-images` (images/pin_digests.py) where
# Docker Hub is reachable, which rewrites this line as vllm/vllm-openai:v0.33.0@sha256:….
FROM vllm/vllm-openai:v0.33.0

# Any UID: see p3-base.Dockerfile.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/home/p3 \
    USER=p3 \
    LOGNAME=p3 \
    XDG_CACHE_HOME=/home/p3/.cache \
    MPLCONFIGDIR=/home/p3/.cache/matplotlib \
    TRITON_CACHE_DIR=/home/p3/.cache/triton \
    VLLM_CONFIG_ROOT=/home/p3/.config/vllm \
    HF_HOME=/cache/huggingface \
    P3_PROGRESS=0

# bubblewrap: the APPS sandbox's full isolation (user, network, pid, mount namespaces);
# grading refuses to run programs without it unless --allow-weak-isolation.
RUN apt-get update && apt-get install -y --no-install-recommends bubblewrap \
    && rm -rf /var/lib/apt/lists/*

# Dependencies in their own layer. torch, vllm and the transformers vllm was built
# with stay exactly: every installed package is pinned to its version, the rest to
# images/constraints.txt.
WORKDIR /opt/p3
COPY pyproject.toml images/constraints.txt images/lock.py ./
RUN python3 lock.py --keep-installed constraints.txt > keep.txt \
    && python3 lock.py --requirements pyproject.toml > requirements.txt \
    && pip install --constraint keep.txt --requirement requirements.txt

COPY README.md ./
COPY src/ src/
RUN pip install --no-deps . && python3 -c "import p3, p3.kfp.components, vllm"

RUN mkdir -p /home/p3 /cache && chmod 1777 /home/p3 /cache
USER 1000
WORKDIR /home/p3
# The base image's entrypoint starts an OpenAI server; a pipeline step runs its own command.
ENTRYPOINT []
