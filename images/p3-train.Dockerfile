# p3-train: the trainer on GPUs: CUDA torch, peft, accelerate, bitsandbytes (QLoRA),
# multi-GPU through torchrun. Build from the repository root:
#   docker build -f images/p3-train.Dockerfile -t ghcr.io/p3-kubeflow/p3-train:0.1.0 .
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/cache/huggingface \
    P3_PROGRESS=0

ARG BITSANDBYTES_VERSION=0.45.5

WORKDIR /opt/p3
COPY pyproject.toml README.md ./
COPY src/ src/
# The image's CUDA torch stays: constrain it to what is installed.
RUN pip freeze | grep -iE '^torch==' > /tmp/keep.txt \
    && pip install --constraint /tmp/keep.txt . "bitsandbytes==${BITSANDBYTES_VERSION}" \
    && python -c "import p3, p3.kfp.components, peft, accelerate, bitsandbytes"

RUN useradd --uid 1000 --create-home --shell /usr/sbin/nologin p3 \
    && mkdir -p /cache && chown p3:p3 /cache
USER 1000:1000
WORKDIR /home/p3
