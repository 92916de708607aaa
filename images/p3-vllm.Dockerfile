# p3-vllm: the rollout scorer and the evaluator on GPUs (vLLM backend).
# From the official vLLM image, pinned; the project is installed on top without
# touching the image's torch/CUDA stack. Build from the repository root:
#   docker build -f images/p3-vllm.Dockerfile -t ghcr.io/p3-kubeflow/p3-vllm:0.1.0 .
FROM vllm/vllm-openai:v0.33.0

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

WORKDIR /opt/p3
COPY pyproject.toml README.md ./
COPY src/ src/
# Keep the image's torch and vllm exactly: constrain them to what is installed.
RUN pip freeze | grep -iE '^(torch|vllm|transformers|xformers)==' > /tmp/keep.txt \
    && pip install --constraint /tmp/keep.txt . \
    && python -c "import p3, p3.kfp.components, vllm"

RUN useradd --uid 1000 --create-home --shell /usr/sbin/nologin p3 \
    && mkdir -p /cache && chown p3:p3 /cache
USER 1000:1000
WORKDIR /home/p3
# The base image's entrypoint starts an OpenAI server; a pipeline step runs its own command.
ENTRYPOINT []
