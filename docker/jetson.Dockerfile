# rynn-edge on a Jetson: JetPack 6 (L4T r36, CUDA 12.6, TensorRT 10.3) by default.
# Thor (JetPack 7): --build-arg BASE_IMAGE=<JetPack 7 image> --build-arg TORCH_INDEX=... --build-arg TORCH_VERSION=...
# (see docs/robot-computer.md). Built and run on the Jetson itself, with the NVIDIA container runtime.
# Not built in this project's CI (no aarch64 GPU host): hadolint checks it.
ARG BASE_IMAGE=nvcr.io/nvidia/l4t-jetpack:r36.4.0
FROM ${BASE_IMAGE}

# NVIDIA's torch for this JetPack (PyPI has no CUDA torch for Jetson); numpy 1, which that wheel is built for.
ARG TORCH_INDEX=https://pypi.jetson-ai-lab.io/jp6/cu126
ARG TORCH_VERSION=2.5.0

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Unpinned: the base image fixes the distribution release, and its security updates are wanted.
# Non-root user; dialout opens the servo adapter, video the cameras.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential make python3-dev python3-pip python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 --groups dialout,video rynn \
    && install -d -o rynn -g rynn /opt/rynn-edge
RUN python3 -m pip install --no-cache-dir --extra-index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}" numpy==1.26.4

WORKDIR /opt/rynn-edge
COPY --chown=1000:1000 . .
USER 1000
# tools/setup_env.py: the venv sees the system's TensorRT and keeps NVIDIA's torch (pinned, never replaced).
RUN make setup VENV=/opt/rynn-edge/.venv PYTHON=python3
ENV PATH=/opt/rynn-edge/.venv/bin:$PATH
ENTRYPOINT ["rynn-edge"]
CMD ["doctor"]
