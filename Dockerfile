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

# Fail the build if the bundled config does not validate. The runtime image has
# no shell to run this in; the builder's glibc is the same Debian 12 one.
COPY routes.yaml /out/routes.yaml
RUN /out/cachegate check --config /out/routes.yaml

# ---- runtime ----------------------------------------------------------------
# Distroless: glibc, libgcc, CA certificates (for rediss://) and nothing else,
# so there is no shell or package manager to exploit or to patch.
FROM gcr.io/distroless/cc-debian12:nonroot

# Set by the release build, e.g.
#   docker build --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" \
#     --build-arg SOURCE=https://<your git host>/cachegate .
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=unknown

LABEL org.opencontainers.image.title="cachegate" \
      org.opencontainers.image.description="Read-through caching reverse proxy for REST APIs" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=builder /out/cachegate /usr/local/bin/cachegate
# Default config; mount your own over /etc/cachegate (the Helm chart does).
COPY routes.yaml /etc/cachegate/routes.yaml

ENV CACHEGATE_CONFIG=/etc/cachegate/routes.yaml \
    CACHEGATE_LISTEN=0.0.0.0:8080 \
    CACHEGATE_ADMIN_LISTEN=0.0.0.0:9090

# Numeric, so Kubernetes' runAsNonRoot can verify it; the Helm chart runs as the
# same uid.
USER 10001:10001

# 8080: proxy. 9090: admin (/healthz, /readyz, /metrics, purge).
EXPOSE 8080 9090

# cachegate drains in-flight requests on SIGTERM (the Kubernetes and systemd stop
# signal); say so, whatever the runtime's default is.
STOPSIGNAL SIGTERM

# No HEALTHCHECK: Kubernetes probes /healthz and /readyz on the admin port (see
# helm/cachegate), and distroless has no HTTP client to run one with.
ENTRYPOINT ["/usr/local/bin/cachegate"]
CMD ["--config", "/etc/cachegate/routes.yaml"]
