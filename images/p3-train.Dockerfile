# p3-train: the trainer on GPUs: CUDA torch, peft, accelerate, bitsandbytes (QLoRA),
# multi-GPU through torchrun. Build from the repository root:
#   docker build -f images/p3-train.Dockerfile -t ghcr.io/p3-kubeflow/p3-train:0.1.0 .
# Base pinned by digest (as recorded in several public repositories; not re-resolved
# from here, which has no registry access).
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime@sha256:c8268a92a69bd500f8be0e665b2630ee006dadaf7bfbc24249141b15ff622755

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
    HF_HOME=/cache/huggingface \
    P3_PROGRESS=0

# Dependencies in their own layer. The image's CUDA torch stack stays: every package it
# already has is pinned to the installed version, the rest to images/constraints.txt, which
# locks the qlora extra's bitsandbytes at the version the tests ran (one pin, not two).
WORKDIR /opt/p3
COPY pyproject.toml images/constraints.txt images/lock.py ./
RUN python lock.py --keep-installed constraints.txt > keep.txt \
    && python lock.py --requirements pyproject.toml --extra qlora > requirements.txt \
    && pip install --constraint keep.txt --requirement requirements.txt

COPY README.md ./
COPY src/ src/
RUN pip install --no-deps . && python -c "import p3, p3.kfp.components, peft, accelerate, bitsandbytes"

RUN mkdir -p /home/p3 /cache && chmod 1777 /home/p3 /cache
USER 1000
WORKDIR /home/p3
