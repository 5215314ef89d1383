# broker: one process, the policies baked in (or mounted over /app/policies).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY broker ./broker
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /app broker
WORKDIR /app
COPY --from=build /install /usr/local
COPY policies ./policies
COPY deploy/broker.toml ./broker.toml
USER broker
EXPOSE 8080 6432
# Ready means: a valid policy is loaded and the broker is not draining.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/-/readyz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["broker", "run", "-c", "/app/broker.toml"]
