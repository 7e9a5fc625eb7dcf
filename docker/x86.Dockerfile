# rynn-edge on a desktop or server GPU: NVIDIA's TensorRT image (TensorRT 10, CUDA, Python with its bindings).
# Not built in this project's CI (no GPU host): hadolint checks it.
ARG BASE_IMAGE=nvcr.io/nvidia/tensorrt:25.08-py3
FROM ${BASE_IMAGE}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Unpinned: the base image fixes the distribution release, and its security updates are wanted.
# Non-root user; dialout opens the servo adapter, video the cameras.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential make python3-dev python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1001 --groups dialout,video rynn \
    && install -d -o rynn -g rynn /opt/rynn-edge

WORKDIR /opt/rynn-edge
COPY --chown=1001:1001 . .
USER 1001
# tools/setup_env.py: the venv sees the image's TensorRT; torch is PyPI's (its x86_64 wheel carries CUDA).
RUN make setup VENV=/opt/rynn-edge/.venv PYTHON=python3
ENV PATH=/opt/rynn-edge/.venv/bin:$PATH
ENTRYPOINT ["rynn-edge"]
CMD ["doctor"]
