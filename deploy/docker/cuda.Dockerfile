# syntax=docker/dockerfile:1
#
# inflight, CUDA backend (one NVIDIA GPU). Build from the repository root:
#
#   docker build -f deploy/docker/cuda.Dockerfile --build-arg CUDA_COMPUTE_CAP=90 -t inflight:cuda .
#   docker build -f deploy/docker/cuda.Dockerfile --build-arg CUDA_COMPUTE_CAP=89 \
#       --build-arg MODEL=smollm2-135m-instruct-q4_1 -t inflight:cuda-l4-smollm2 .
#
#   docker run --rm --gpus all -p 8080:8080 -v inflight-models:/models inflight:cuda
#
# CUDA_COMPUTE_CAP is the GPU generation the kernels are compiled for (README, "The
# CUDA backend"): 90 H100/H200, 89 L4/L40S, 86 A10G, 80 A100. The build machine has
# no GPU for the build to ask, so it must be given; the default is Hopper, as in
# benches/gpu/cuda-toolkit.sh.
#
# CUDA is kept at 13.0.x like benches/gpu/cuda-toolkit.sh (newer PTX may be refused by
# the 580 driver series). Tags 13.0.1-{devel,runtime}-ubuntu24.04 are NVIDIA's
# published names (seen in public Dockerfiles); their digests were not checked here:
# pin them with `docker buildx imagetools inspect nvidia/cuda:13.0.1-runtime-ubuntu24.04`.
# The host needs an NVIDIA driver for CUDA 13 and the NVIDIA Container Toolkit
# (`--gpus`), which mounts the driver's libcuda.so.1 into the container.

ARG MODEL=""

# The Rust toolchain comes from the official Rust image (rustup's portable builds run
# on Ubuntu 24.04's newer glibc) instead of piping a download into sh.
FROM rust:1.95.0-bookworm AS rust

FROM nvidia/cuda:13.0.1-devel-ubuntu24.04 AS builder
ARG CUDA_COMPUTE_CAP=90
# Ubuntu's archive replaces package versions within a release, so exact apt pins
# break the build once superseded; the base image tag pins the release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc g++ make pkg-config ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=rust /usr/local/rustup /usr/local/rustup
COPY --from=rust /usr/local/cargo /usr/local/cargo
# The driver's libcuda is absent at build time; the toolkit's stub satisfies the
# linker (its SONAME is libcuda.so.1, the driver's file found at run time).
ENV RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:/usr/local/cuda/bin:$PATH \
    CUDA_ROOT=/usr/local/cuda \
    CUDA_HOME=/usr/local/cuda \
    CUDA_PATH=/usr/local/cuda \
    CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP} \
    LIBRARY_PATH=/usr/local/cuda/lib64/stubs:/usr/local/cuda/lib64
WORKDIR /src
COPY . .
# The `gpu` profile: release without debug info, stripped (Cargo.toml).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    cargo build --profile gpu --features cuda --locked -p inflight --bin inflight \
    && install -m 0755 target/gpu/inflight /usr/local/bin/inflight

ARG MODEL
# `models pull` never touches the GPU: it fetches and checks the file.
RUN mkdir -p /models \
    && if [ -n "$MODEL" ]; then inflight models pull "$MODEL" --models-dir /models; fi

# The runtime flavour, not base: base carries only cudart, and the binary loads
# libcudart.so.13, libcublas.so.13, libcublasLt.so.13 and libcurand.so.10 at start
# whatever --backend says (README). The check below fails the build if a future tag
# drops one, instead of the container failing at start.
FROM nvidia/cuda:13.0.1-runtime-ubuntu24.04 AS runtime-base
# The loader searches LD_LIBRARY_PATH, then its cache; the toolkit's lib64 is added
# in case a tag stops registering it with ldconfig.
ENV LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/local/nvidia/lib:/usr/local/nvidia/lib64
RUN ldconfig -p > /tmp/ldcache \
    && for lib in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10; do \
        { grep -qF "$lib" /tmp/ldcache || [ -e "/usr/local/cuda/lib64/$lib" ]; } \
            || { echo "missing $lib" >&2; exit 1; }; \
    done \
    && rm /tmp/ldcache \
    && groupadd --system --gid 10001 inflight \
    && useradd --system --uid 10001 --gid inflight --home-dir /nonexistent --shell /usr/sbin/nologin inflight
COPY --from=builder /usr/local/bin/inflight /usr/local/bin/inflight
# Group 0, group-writable: writable by uid 10001, by root (SageMaker) and by
# arbitrary uids in group 0.
COPY --from=builder --chown=10001:0 --chmod=0775 /models /models

# `serve` alone binds 127.0.0.1 (src/cli.rs); SageMaker's `docker run IMAGE serve`
# needs 0.0.0.0:8080.
ENV INFLIGHT_HOST=0.0.0.0 \
    INFLIGHT_PORT=8080 \
    INFLIGHT_MODELS_DIR=/models \
    INFLIGHT_BACKEND=cuda \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

LABEL org.opencontainers.image.title="inflight (CUDA)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true

EXPOSE 8080

# As in cpu.Dockerfile: a baked model is the one served; otherwise `serve` keeps its
# own default (/opt/ml/model, else the registry default fetched into /models).
FROM runtime-base AS runtime-model
FROM runtime-base AS runtime-model-baked
ARG MODEL
ENV INFLIGHT_MODEL=${MODEL} \
    INFLIGHT_OFFLINE=true

# The stage name is computed from MODEL; both candidates are stages above, not
# registry images.
# hadolint ignore=DL3006
FROM runtime-model${MODEL:+-baked}
VOLUME ["/models"]
USER 10001:0
# /health is 200 only once the model is loaded; bash's /dev/tcp instead of curl.
# Loading dequantizes GGUF weights to bf16 on the GPU: allow a long start.
HEALTHCHECK --interval=15s --timeout=3s --start-period=600s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${SAGEMAKER_BIND_TO_PORT:-${INFLIGHT_PORT:-8080}} && printf 'GET /health HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["inflight"]
CMD ["serve", "--host", "0.0.0.0"]
