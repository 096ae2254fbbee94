# GARAGE: one image for every pipeline process (preprocess, GAT, GAN, evaluate, MultiQC).
#
#   docker build -t ghcr.io/garage-sc/garage:0.1.0 .                 # CUDA torch (serves -profile gpu)
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu \
#                -t ghcr.io/garage-sc/garage:0.1.0-cpu .              # CPU-only torch, ~1 GB smaller
#   singularity pull garage-0.1.0.sif docker://ghcr.io/garage-sc/garage:0.1.0
#
# The default torch wheel from PyPI is the CUDA build (it bundles the CUDA runtime, so the
# host only needs an NVIDIA driver plus `--gpus all` / `--nv`). See docs/usage.md.

ARG BASE_IMAGE=debian:bookworm-slim

# ------------------------------------------------------------------------------ build
FROM ${BASE_IMAGE} AS build

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# torch first (the big layer, cached across package changes)
#   TORCH_INDEX_URL empty: PyPI's wheel (CUDA build on linux/x86_64)
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu: CPU-only build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/garage \
    && /opt/garage/bin/pip install --no-cache-dir ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==${TORCH_VERSION}"

# the package: torch-geometric, scanpy, POT, MultiQC and the GARAGE MultiQC plugin (entry points)
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src/ src/
COPY bin/ bin/
RUN /opt/garage/bin/pip install --no-cache-dir . \
    && install -m 0755 bin/garage_*.py /opt/garage/bin/ \
    && /opt/garage/bin/garage --version

# ------------------------------------------------------------------------------ runtime
FROM ${BASE_IMAGE}

ARG GARAGE_VERSION=0.1.0
LABEL org.opencontainers.image.title="garage" \
      org.opencontainers.image.description="GARAGE: synthetic single-cell RNA-seq that keeps rare cell types (GAT seed selection + seeded conditional GAN), with MultiQC and the GARAGE plugin" \
      org.opencontainers.image.version="${GARAGE_VERSION}" \
      org.opencontainers.image.source="https://github.com/garage-sc/garage" \
      org.opencontainers.image.documentation="https://github.com/garage-sc/garage/blob/main/docs/usage.md" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.vendor="garage-sc"

# procps: Nextflow reads task metrics with `ps`
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 procps ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 --shell /bin/bash garage

COPY --from=build /opt/garage /opt/garage

# Caches go to /tmp: Nextflow runs the container as the calling user (-u uid:gid) and
# Singularity/Apptainer mount the image read-only, so neither $HOME nor the venv is writable.
ENV PATH="/opt/garage/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONNOUSERSITE=1 \
    MPLBACKEND=Agg \
    MPLCONFIGDIR=/tmp/garage-matplotlib \
    NUMBA_CACHE_DIR=/tmp/garage-numba

# the `garage` user created above (numeric, so hosts without that name resolve it)
USER 1000:1000
WORKDIR /home/garage

RUN garage --version \
    && multiqc --version \
    && python3 -c "import torch, torch_geometric, scanpy, ot, garage.multiqc; print('torch', torch.__version__)"

CMD ["garage", "--help"]
