# collabvit server (CPU). Build: docker build -t collabvit .
# Run:   docker run -p 8000:8000 -e COLLABVIT_TOKEN=... collabvit
# Other model or engine: append serve options, e.g.
#        docker run ... collabvit serve --server deit_small_patch16_224 --engine ray --replicas 2
# The CUDA variant (base image, torch index, --device cuda) is in docs/deploy.md.
# tests/server/test_serve_config.py checks that the extras below exist, that CMD parses
# as a collabvit serve command line and runs the HEALTHCHECK command against a real server.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OMP_NUM_THREADS=1

# the CPU build of torch: the default index brings the CUDA one (gigabytes more)
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG EXTRAS=research,ray

WORKDIR /opt/collabvit
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
# DL3013: this installs the project itself; pyproject.toml bounds every dependency
# hadolint ignore=DL3013
RUN pip install --no-cache-dir --extra-index-url "${TORCH_INDEX}" ".[${EXTRAS}]" \
    && useradd --create-home --uid 10001 collabvit

USER 10001
WORKDIR /home/collabvit
EXPOSE 8000

# readiness, not liveness: 503 while the model loads or the server drains
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2).status != 200)"]

ENTRYPOINT ["collabvit"]
CMD ["serve", "--server", "fmnist-base", "--host", "0.0.0.0", "--port", "8000", "--threads", "1"]
