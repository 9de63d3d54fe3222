# syntax=docker/dockerfile:1
# One image for every process of the system (one repo, one deployable): engine, gateway, accounts
# (the account stage, and operators' deposits/withdrawals), stackctl (topic + migration init) and
# loadtest. The command picks the role, as ECS task definitions do.
#
#   docker build -t trading-engine .
#   docker run --rm trading-engine gateway --help

ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src
# librdkafka is compiled from source by rdkafka-sys (make + a C compiler, both in this image),
# with OpenSSL for TLS and SASL/SCRAM to MSK: libssl-dev and pkg-config are in rust:bookworm too.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
        --bin engine --bin gateway --bin accounts --bin stackctl --bin loadtest \
    && mkdir -p /out \
    && cp target/release/engine target/release/gateway target/release/accounts \
          target/release/stackctl target/release/loadtest /out/

FROM debian:bookworm-slim AS runtime
# Amazon's RDS CA bundle (every region's roots) for TLS to Aurora (sslmode=verify-full, see
# docs/DEPLOY.md). As a local CA, update-ca-certificates (below, and in ca-certificates' own
# install) adds it to the system bundle that OpenSSL, hence sqlx's native-tls, trusts, and links
# it as /etc/ssl/certs/rds-global-bundle.pem, the sslrootcert the services' DATABASE_URL names.
# Unpinned on purpose: AWS adds CAs to it, and a build is where AWS is reachable.
ADD --chmod=644 https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem \
    /usr/local/share/ca-certificates/rds-global-bundle.crt
# No shell tools beyond bash: health checks use bash's /dev/tcp (see compose file). libssl3 and
# the CA certificates let librdkafka verify the brokers' certificates (TLS to MSK) and sqlx
# Aurora's (above).
# DL3008 (pin apt versions): bookworm's security updates replace the exact versions, so pins would
# break the build at the next point release; the base image tag pins the Debian release instead.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
    && update-ca-certificates \
    && test -s /etc/ssl/certs/rds-global-bundle.pem \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin app
COPY --from=builder /out/ /usr/local/bin/
COPY config/pairs.toml /etc/trading/pairs.toml
ENV PAIRS_FILE=/etc/trading/pairs.toml \
    RUST_LOG=info \
    LOG_FORMAT=json
USER 10001:10001
# 8080: gateway WebSocket API and /healthz /readyz /metrics. 9100: engine /healthz /metrics.
# 9102: account stage /metrics.
EXPOSE 8080 9100 9102
# SIGTERM starts the drain (infra::shutdown); ECS stopTimeout / compose stop_grace_period bound it.
STOPSIGNAL SIGTERM
CMD ["gateway"]
