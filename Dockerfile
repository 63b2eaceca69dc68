# syntax=docker/dockerfile:1

# ---- build ------------------------------------------------------------------
FROM rust:1-slim-bookworm AS builder
WORKDIR /build

# Cache mounts keep the registry and build output between builds, so a source
# change recompiles only cachegate itself. benches/ is copied because Cargo.toml
# names the benchmarks.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/build/target \
    cargo build --release --locked --bin cachegate \
 && install -D -m 0755 target/release/cachegate /out/cachegate

# ---- runtime ----------------------------------------------------------------
FROM debian:bookworm-slim

LABEL org.opencontainers.image.title="cachegate" \
      org.opencontainers.image.description="Read-through caching reverse proxy for REST APIs" \
      org.opencontainers.image.licenses="Apache-2.0"

RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 cachegate \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin cachegate

COPY --from=builder /out/cachegate /usr/local/bin/cachegate
# Default config; mount your own over /etc/cachegate (the Helm chart does).
COPY routes.yaml /etc/cachegate/routes.yaml

ENV CACHEGATE_CONFIG=/etc/cachegate/routes.yaml \
    CACHEGATE_LISTEN=0.0.0.0:8080 \
    CACHEGATE_ADMIN_LISTEN=0.0.0.0:9090

# Fail the build if the bundled config does not validate (also proves the
# binary runs on this base image).
RUN cachegate check --config /etc/cachegate/routes.yaml

# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001

# 8080: proxy. 9090: admin (/healthz, /readyz, /metrics, purge).
EXPOSE 8080 9090

# No HEALTHCHECK: the slim image has no HTTP client. Kubernetes probes
# /healthz and /readyz on the admin port instead (see helm/cachegate).
ENTRYPOINT ["cachegate"]
CMD ["--config", "/etc/cachegate/routes.yaml"]
