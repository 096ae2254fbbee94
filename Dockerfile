# GARAGE pipeline images: one Dockerfile, two variants chosen by the VARIANT build argument.
#
#   VARIANT=cpu  (default)  torch CPU build   -> ${registry}/garage:${version}
#                           preprocess, evaluate and MultiQC always; GAT and GAN without -profile gpu
#   VARIANT=cuda            torch CUDA build  -> ${registry}/garage-cuda:${version}
#                           GAT and GAN under -profile gpu (the host needs only the NVIDIA driver)
#
#   make image        # = docker build --build-arg VARIANT=cpu  -t ghcr.io/garage-sc/garage:0.1.0 .
#   make image-gpu    # = docker build --build-arg VARIANT=cuda -t ghcr.io/garage-sc/garage-cuda:0.1.0 .
#
# Where torch comes from (the only difference between the variants):
#   TORCH_INDEX_URL  index for torch and its dependencies. Default: PyTorch's CPU index for
#                    cpu (torch==X+cpu), PyPI for cuda (PyPI's Linux torch wheel is the CUDA build).
#   PIP_FIND_LINKS   optional extra place (URL or folder inside the build) with wheels, e.g. a
#                    site mirror or a local `python3 -m http.server` over a wheel folder when the
#                    PyTorch index cannot be reached; see docs/container_build.md.
# Everything else (torch-geometric, scanpy, POT, MultiQC, ...) comes from PyPI.

ARG BASE_IMAGE=debian:bookworm-slim

# ------------------------------------------------------------------------------ build
FROM ${BASE_IMAGE} AS build

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*

ARG VARIANT=cpu
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=""
ARG PIP_FIND_LINKS=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# torch first (the big layer, cached across package changes), pinned for the rest of the build
RUN case "${VARIANT}" in \
        cpu)  spec="torch==${TORCH_VERSION}+cpu"; index="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}" ;; \
        cuda) spec="torch==${TORCH_VERSION}";     index="${TORCH_INDEX_URL:-https://pypi.org/simple}" ;; \
        *)    echo "Error: VARIANT must be cpu or cuda, not '${VARIANT}'" >&2; exit 2 ;; \
    esac \
    && python3 -m venv /opt/garage \
    && /opt/garage/bin/pip install --no-cache-dir --index-url "${index}" \
        ${PIP_FIND_LINKS:+--find-links "${PIP_FIND_LINKS}"} "${spec}" \
    && /opt/garage/bin/python -c "import torch; print(torch.__version__)" \
    && /opt/garage/bin/pip freeze | grep '^torch==' > /opt/garage/torch-constraint.txt

# the package: torch-geometric, scanpy, POT, MultiQC and the GARAGE MultiQC plugin (entry points)
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src/ src/
COPY bin/ bin/
RUN /opt/garage/bin/pip install --no-cache-dir --constraint /opt/garage/torch-constraint.txt . \
    && install -m 0755 bin/garage_*.py /opt/garage/bin/ \
    && /opt/garage/bin/garage --version

# ------------------------------------------------------------------------------ runtime
FROM ${BASE_IMAGE}

ARG VARIANT=cpu
ARG GARAGE_VERSION=0.1.0
LABEL org.opencontainers.image.title="garage" \
      org.opencontainers.image.description="GARAGE: synthetic single-cell RNA-seq that keeps rare cell types (GAT seed selection + seeded conditional GAN), with MultiQC and the GARAGE plugin" \
      org.opencontainers.image.version="${GARAGE_VERSION}" \
      org.opencontainers.image.source="https://github.com/garage-sc/garage" \
      org.opencontainers.image.documentation="https://github.com/garage-sc/garage/blob/main/docs/usage.md" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.vendor="garage-sc" \
      sc.garage.variant="${VARIANT}"

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
    GARAGE_IMAGE_VARIANT="${VARIANT}" \
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
