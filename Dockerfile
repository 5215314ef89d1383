# broker: one process, the policies baked in (or mounted over /app/policies).
#
# Supply chain: the base image is pinned by digest (a tag can be re-pointed; a digest
# cannot), and every Python package, the build backend included, is installed from
# requirements*.lock with --require-hashes: a package whose bytes differ from the ones
# locked is refused. Regenerate the locks after changing pyproject.toml: `make lock`.
# Runs as a non-root user and writes nothing under / (read-only root filesystem ready):
# bytecode is compiled at build time and the audit log goes to standard output. The one
# file it makes is the policy builder's fork-server socket (multiprocessing's forkserver,
# in a private pymp-* directory under /tmp): Python 3.11's fork server does not check who
# connects, and its children unpickle what they are sent, so whoever can reach that socket
# runs code as the broker. So the container needs a /tmp of its OWN, writable, that no
# other container sees: `docker run --read-only --tmpfs /tmp ...`, compose `tmpfs: [/tmp]`,
# a Kubernetes emptyDir at /tmp mounted in the broker's container only. Never point
# TMPDIR at /dev/shm: in a pod every container shares it (one IPC namespace). Without a
# writable temporary directory the broker refuses to start and says so.
# `make image-check` runs this image's steps read-only under strace to hold it to that.
ARG PYTHON_IMAGE=python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7

FROM ${PYTHON_IMAGE} AS build
# BROKER_COMPILE: the per-request modules are compiled with mypyc (broker/native.py), which
# needs a C compiler: the slim base has none, so Debian's (from its signed archive) is
# installed here; the final stage gets the compiled modules, not the compiler.
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 BROKER_COMPILE=1
WORKDIR /src
RUN command -v gcc >/dev/null || { apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*; }
COPY requirements.lock requirements-build.lock ./
RUN python -m venv /opt/broker \
 && /opt/broker/bin/pip install --require-hashes --only-binary=:all: -r requirements.lock \
 && /opt/broker/bin/pip install --require-hashes --only-binary=:all: -r requirements-build.lock
COPY pyproject.toml setup.py README.md ./
COPY broker ./broker
# the project itself: no dependency resolution here (everything came from the lock); the
# build must have compiled (broker.NATIVE), and what only the build needed leaves: setuptools,
# mypy and what it alone brought (requirements-build.lock's packages not in requirements.lock)
RUN /opt/broker/bin/pip install --no-deps --no-build-isolation . \
 && cd / && /opt/broker/bin/python -c 'import broker, sys; sys.exit(broker.NATIVE != "compiled")' \
 && /opt/broker/bin/pip uninstall --yes setuptools mypy librt ast-serialize pathspec \
 && /opt/broker/bin/python -m compileall -q /opt/broker

FROM ${PYTHON_IMAGE}
# /app/tls: where deploy/compose.yaml's certs service writes the door's development
# certificate (a new named volume mounted there takes this directory's owner and mode)
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin broker \
 && install -d -o 10001 -g 10001 -m 0700 /app/tls
ENV PATH=/opt/broker/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY --from=build /opt/broker /opt/broker
COPY policies ./policies
COPY deploy/broker.toml ./broker.toml
USER 10001:10001
EXPOSE 8080 6432
# Ready means: a valid policy is loaded and the broker is not draining.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/-/readyz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["broker", "run", "-c", "/app/broker.toml"]
