# syntax=docker/dockerfile:1
#
# inflight, CPU backend. Build from the repository root (the context must hold
# Cargo.toml, src/, models/registry.toml and deploy/instance-prices.toml, which are
# compiled into the binary):
#
#   docker build -f deploy/docker/cpu.Dockerfile -t inflight:cpu .
#   docker build -f deploy/docker/cpu.Dockerfile --build-arg MODEL=smollm2-135m-instruct-q4_1 -t inflight:cpu-smollm2 .
#
#   docker run --rm -p 8080:8080 -v inflight-models:/models inflight:cpu
#
# Base images are pinned by exact version tag. Their digests were not checked here (no
# registry access from where this was written): pin them with
# `docker buildx imagetools inspect rust:1.95.0-bookworm` before relying on a build
# being reproducible. debian:12.11 is the point release the project's own build
# machine runs; rustc 1.95.0 is the compiler the project builds with.

ARG MODEL=""

FROM rust:1.95.0-bookworm AS builder
WORKDIR /src
COPY . .
# Only the server binary: the workspace's other member (the libnrt emulator) is a
# test double and has no place in an image. --locked: build what Cargo.lock says.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    cargo build --release --locked -p inflight --bin inflight \
    && install -m 0755 target/release/inflight /usr/local/bin/inflight

# Baking a model: `models pull` fetches a registry model and checks its sha256,
# exactly as `serve` would at start. Done in the builder so the runtime stage gets
# the files with one COPY and no network tools.
ARG MODEL
RUN mkdir -p /models \
    && if [ -n "$MODEL" ]; then inflight models pull "$MODEL" --models-dir /models; fi

FROM debian:12.11-slim AS runtime-base
# A fixed uid/gid so volumes and host bind mounts can be chowned predictably.
RUN groupadd --system --gid 10001 inflight \
    && useradd --system --uid 10001 --gid inflight --home-dir /nonexistent --shell /usr/sbin/nologin inflight
COPY --from=builder /usr/local/bin/inflight /usr/local/bin/inflight
# /models: owned by the image's user, group 0 with group write, so the server can
# fetch into it as uid 10001, as root (SageMaker runs containers as root), or as any
# uid in group 0 (OpenShift-style arbitrary uids). Nothing else needs writing.
COPY --from=builder --chown=10001:0 --chmod=0775 /models /models

# `serve` binds 127.0.0.1 unless told otherwise (src/cli.rs); SageMaker runs
# `docker run IMAGE serve`, which must listen on 0.0.0.0:8080, so the image says so
# through the environment rather than only through CMD.
ENV INFLIGHT_HOST=0.0.0.0 \
    INFLIGHT_PORT=8080 \
    INFLIGHT_MODELS_DIR=/models \
    INFLIGHT_BACKEND=cpu

LABEL org.opencontainers.image.title="inflight (CPU)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true

EXPOSE 8080

# A model baked in is the one served; without one, `serve` keeps its own default
# (SageMaker's /opt/ml/model when present, else the registry's default model,
# fetched into /models at first start). INFLIGHT_MODEL cannot be set to "" (clap
# rejects an empty value), hence two stages and the choice below.
FROM runtime-base AS runtime-model
FROM runtime-base AS runtime-model-baked
ARG MODEL
ENV INFLIGHT_MODEL=${MODEL} \
    INFLIGHT_OFFLINE=true

# The stage name is computed from MODEL; both candidates are stages above, not
# registry images, so hadolint's "tag the image" rule does not apply.
# hadolint ignore=DL3006
FROM runtime-model${MODEL:+-baked}
# Declared after the model is in place: changes to a VOLUME path after its
# declaration are discarded by the builder. A new named volume starts as a copy of
# /models, baked model included.
VOLUME ["/models"]
USER 10001:0
# /health answers 200 only once the model is loaded. bash's /dev/tcp keeps curl
# (and its libraries) out of the image; the port follows the same variables the
# server reads. A first start that downloads the model needs the long start period.
HEALTHCHECK --interval=15s --timeout=3s --start-period=300s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${SAGEMAKER_BIND_TO_PORT:-${INFLIGHT_PORT:-8080}} && printf 'GET /health HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]
# Exec form: SIGTERM reaches inflight itself, which drains in-flight requests for
# --shutdown-timeout (30 s) before exiting.
ENTRYPOINT ["inflight"]
CMD ["serve", "--host", "0.0.0.0"]
