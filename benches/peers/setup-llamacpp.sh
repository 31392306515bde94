#!/usr/bin/env bash
# Builds llama.cpp's `llama-server`, `llama-bench`, `llama-batched-bench` and
# `llama-quantize` (which writes K-quant files, e.g. Q5_K_M, from the default model) from the
# llama.cpp sources that the PyPI package llama-cpp-python ships in its sdist
# (vendor/llama.cpp), under
# $INFLIGHT_PEERS_DIR. Nothing of llama.cpp is kept in this repository.
# Needs a C++ compiler; cmake comes from PyPI if the system has none.

source "$(dirname "$0")/common.sh"

if [[ -x $LLAMA_SERVER && -x $LLAMA_BENCH && -x $LLAMA_BATCHED_BENCH && -x $LLAMA_QUANTIZE ]]; then
    log "llama-server ready: $LLAMA_SERVER; llama-bench: $LLAMA_BENCH"
    exit 0
fi
mkdir -p "$LLAMACPP_DIR"
sdist=$LLAMACPP_DIR/sdist
if [[ ! -d $sdist/vendor/llama.cpp ]]; then
    log "downloading the llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION sdist"
    "$PYTHON" -m pip download -q --disable-pip-version-check --no-deps --no-binary llama-cpp-python \
        -d "$LLAMACPP_DIR" "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"
    mkdir -p "$sdist"
    tar -xzf "$LLAMACPP_DIR"/llama_cpp_python-"$LLAMA_CPP_PYTHON_VERSION".tar.gz -C "$sdist" --strip-components=1
fi
cmake_bin=$(command -v cmake || true)
if [[ -z $cmake_bin ]]; then
    "$PYTHON" -m venv "$LLAMACPP_DIR/tools"
    "$LLAMACPP_DIR/tools/bin/pip" install -q --disable-pip-version-check cmake
    cmake_bin=$LLAMACPP_DIR/tools/bin/cmake
fi
if [[ $LLAMACPP_AMX == 0 ]]; then
    # Native would switch the AMX kernels on where the CPU has the tiles; name the
    # vector extensions instead, every one this CPU has but AMX.
    flags=$(grep -m1 '^flags' /proc/cpuinfo)
    has() { [[ " $flags " == *" $1 "* ]] && echo ON || echo OFF; }
    isa=(-DGGML_NATIVE=OFF -DGGML_AVX=$(has avx) -DGGML_AVX2=$(has avx2) -DGGML_FMA=$(has fma)
        -DGGML_F16C=$(has f16c) -DGGML_BMI2=$(has bmi2) -DGGML_AVX512=$(has avx512f)
        -DGGML_AVX512_VBMI=$(has avx512vbmi) -DGGML_AVX512_VNNI=$(has avx512_vnni)
        -DGGML_AVX512_BF16=$(has avx512_bf16) -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF)
    what="this CPU's vector extensions without AMX"
else
    isa=(-DGGML_NATIVE=ON)
    what="native CPU features"
fi
log "building llama-server, llama-bench, llama-batched-bench and llama-quantize (Release, $what, $THREADS jobs) in $LLAMACPP_BUILD"
"$cmake_bin" -S "$sdist/vendor/llama.cpp" -B "$LLAMACPP_BUILD" -DCMAKE_BUILD_TYPE=Release \
    "${isa[@]}" -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_UI=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON > "$LLAMACPP_DIR/cmake.log"
"$cmake_bin" --build "$LLAMACPP_BUILD" --target llama-server llama-bench llama-batched-bench llama-quantize -j "$THREADS" > "$LLAMACPP_DIR/build.log"
log "llama-server ready: $LLAMA_SERVER"
