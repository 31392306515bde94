# syntax=docker/dockerfile:1
#
# inflight, Neuron backend (AWS Inferentia2). Build from the repository root:
#
#   docker build -f deploy/docker/neuron.Dockerfile -t inflight:neuron .
#   # bake compiled artifacts (a folder with manifest.json, inside the build context):
#   docker build -f deploy/docker/neuron.Dockerfile --build-arg MODEL=artifacts/smollm2-inf2 -t inflight:neuron-smollm2 .
#
#   docker run --rm -p 8080:8080 --device=/dev/neuron0 \
#       -v /srv/artifacts/smollm2-inf2:/opt/ml/model:ro inflight:neuron
#
# The host (an inf2 instance) needs the Neuron driver (aws-neuronx-dkms); the
# container needs only libnrt, installed below. Each /dev/neuronN is one Inferentia2
# chip (2 NeuronCores); pass the ones this server may use.
#
# The binary loads libnrt at run time, so it is built exactly like the CPU image's;
# only the runtime stage differs.
#
# Version pin. The backend's ABI follows Neuron SDK 2.28's headers
# (src/backend/neuron/ffi.rs), whose libnrt is aws-neuronx-runtime-lib 2.30.50.0 and
# collectives 2.30.58.0, per AWS's component release notes for Neuron 2.28.0
# (aws-neuron-sdk, release-notes/components/runtime.rst, "Neuron Runtime (Neuron
# 2.28.0 Release)", and https://awsdocs-neuron.readthedocs-hosted.com/en/v2.28.1/release-notes/components/index.html).
# The Debian revision after the version was not seen: `=2.30.50.0*` matches it.
# Verify with `apt-cache madison aws-neuronx-runtime-lib` against the repository.
# Host driver: SDK 2.28 shipped aws-neuronx-dkms 2.26.5.0 / 2.26.10.0. A newer host
# driver may refuse this libnrt (shared/NEURON.md: driver 2.29 needs libnrt >= 2.33):
# keep driver and runtime from the same SDK release.

ARG MODEL=""

FROM rust:1.95.0-bookworm AS builder
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    cargo build --release --locked -p inflight --bin inflight \
    && install -m 0755 target/release/inflight /usr/local/bin/inflight
# MODEL here is a compiled artifact folder (neuron/README.md, "The artifact folder"),
# given relative to the build context; it is checked for its manifest.
ARG MODEL
RUN mkdir -p /models \
    && if [ -n "$MODEL" ]; then \
        test -f "/src/$MODEL/manifest.json" || { echo "MODEL=$MODEL has no manifest.json" >&2; exit 1; }; \
        cp -r "/src/$MODEL" /models/neuron-artifacts; \
    fi

# AWS's Neuron apt repository and key
# (https://awsdocs-neuron.readthedocs-hosted.com, setup guides: repository
# https://apt.repos.neuron.amazonaws.com, key GPG-PUB-KEY-AMAZON-AWS-NEURON.PUB).
# Fetched in a throwaway stage so curl and gnupg stay out of the runtime image. The
# key's fingerprint was not checked here: verify it against AWS's documentation.
FROM ubuntu:24.04 AS neuron-apt
# Tools for fetching and dearmoring the key only; this stage is discarded, so their
# exact versions do not reach the image.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl gnupg \
    && rm -rf /var/lib/apt/lists/*
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN mkdir -p /out/keyrings /out/sources \
    && curl -fsSL https://apt.repos.neuron.amazonaws.com/GPG-PUB-KEY-AMAZON-AWS-NEURON.PUB \
        | gpg --dearmor -o /out/keyrings/neuron.gpg \
    && . /etc/os-release \
    && echo "deb [signed-by=/etc/apt/keyrings/neuron.gpg] https://apt.repos.neuron.amazonaws.com ${VERSION_CODENAME} main" \
        > /out/sources/neuron.list

# Ubuntu 24.04: listed as tested for Inf2 in the 2.28.0 runtime notes (glibc 2.39,
# newer than the 2.36 the binary was linked against on bookworm). Pin its digest
# with `docker buildx imagetools inspect ubuntu:24.04` (not checked here).
FROM ubuntu:24.04 AS runtime-base
COPY --from=neuron-apt /out/keyrings/neuron.gpg /etc/apt/keyrings/neuron.gpg
COPY --from=neuron-apt /out/sources/neuron.list /etc/apt/sources.list.d/neuron.list
# ca-certificates: apt needs it to reach the Neuron repository over HTTPS; Ubuntu's
# archive moves its version within a release, so it is left to the base tag (DL3008).
# The Neuron packages are pinned exactly: AWS's repository keeps old versions.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && apt-get install -y --no-install-recommends \
        aws-neuronx-runtime-lib=2.30.50.0* \
        aws-neuronx-collectives=2.30.58.0* \
    && rm -rf /var/lib/apt/lists/* \
    && test -e /opt/aws/neuron/lib/libnrt.so.1 \
    && groupadd --system --gid 10001 inflight \
    && useradd --system --uid 10001 --gid inflight --home-dir /nonexistent --shell /usr/sbin/nologin inflight
COPY --from=builder /usr/local/bin/inflight /usr/local/bin/inflight
COPY --from=builder --chown=10001:0 --chmod=0775 /models /models

# The server's own settings: listen on every interface (SageMaker runs
# `docker run IMAGE serve` and probes 0.0.0.0:8080); the runtime library by path, so
# no other libnrt on the loader's path is picked up by accident.
ENV INFLIGHT_HOST=0.0.0.0 \
    INFLIGHT_PORT=8080 \
    INFLIGHT_MODELS_DIR=/models \
    INFLIGHT_BACKEND=neuron \
    INFLIGHT_NEURON_LIB=/opt/aws/neuron/lib/libnrt.so.1 \
    LD_LIBRARY_PATH=/opt/aws/neuron/lib
# The Neuron runtime reads these at nrt_init / load (shared/NEURON.md; AWS's
# "Neuron Runtime Configuration" page). None is set here, so the runtime's defaults
# apply; set them with `docker run -e`:
#   NEURON_RT_VISIBLE_CORES  NeuronCores this process may use, a contiguous range
#                            such as 0-1 (wins over NEURON_RT_NUM_CORES). Two servers
#                            on one inf2.24xlarge: 0-5 and 6-11.
#   NEURON_RT_NUM_CORES      how many cores to take, when no range is given.
#   NEURON_RT_LOG_LEVEL      the runtime's log verbosity (e.g. ERROR, WARN, INFO).
#   NEURON_RT_EXEC_TIMEOUT   seconds before an execute is declared hung (read at load).
#   NEURON_RT_ROOT_COMM_ID   ip:port for collectives; needed only by tensor-parallel
#                            NEFFs, which the backend does not run yet.

LABEL org.opencontainers.image.title="inflight (Neuron)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true

EXPOSE 8080

# Without baked artifacts the model comes from SageMaker's /opt/ml/model (serve's
# default when present) or from INFLIGHT_MODEL / --model pointing at a mounted folder.
FROM runtime-base AS runtime-model
FROM runtime-base AS runtime-model-baked
ENV INFLIGHT_MODEL=/models/neuron-artifacts \
    INFLIGHT_OFFLINE=true

# The stage name is computed from MODEL; both candidates are stages above, not
# registry images.
# hadolint ignore=DL3006
FROM runtime-model${MODEL:+-baked}
VOLUME ["/models"]
# /dev/neuron* must be readable and writable by this uid on the host (the driver
# package's udev rule decides its mode; verify on the instance). If it is not, run
# with `--user 0` (what SageMaker does anyway) rather than loosening the device.
USER 10001:0
# /health is 200 only once every graph is loaded; loading NEFFs onto the device can
# take minutes, hence the long start period. bash's /dev/tcp instead of curl.
HEALTHCHECK --interval=15s --timeout=3s --start-period=600s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${SAGEMAKER_BIND_TO_PORT:-${INFLIGHT_PORT:-8080}} && printf 'GET /health HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["inflight"]
CMD ["serve", "--host", "0.0.0.0"]
