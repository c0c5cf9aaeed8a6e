#!/usr/bin/env bash
# The GPU path end to end, for a Linux machine with an NVIDIA GPU and its driver (`nvidia-smi`
# works); not part of CI, which only compiles and links `--features cuda` (.ci/run).
#
#   scripts/gpu_check.sh [OUT_DIR]      # default OUT_DIR: target/gpu-check
#
# 1. installs the mlx-cuda-12==0.32.2 wheel WITH its nvidia-* runtime wheels (several GB) into
#    external/deps/cuda12, where the wheel's libmlx.so looks for them ($ORIGIN/../../nvidia/…);
#    the build alone installs the wheel without them (external/README.md);
# 2. builds with --features cuda into target/cuda;
# 3. generates on Qwen2.5-Coder 0.5B and 1.5B with `--device gpu` (Execution::Gpu: the GGUF
#    blocks converted to MLX's affine layout, MLX's quantized_matmul);
# 4. runs the fidelity tests with MLX_ENGINE_TEST_GPU=1 (the GPU run is added to the CPU ones,
#    against the same float32 references; needs the Python references of tests/reference/);
# 5. runs `bench --device gpu` and, if `llama-bench` built with CUDA is given as
#    LLAMA_BENCH=/path/to/llama-bench (from the llama-cpp-python 0.3.36 sdist, as in
#    benches/compare/compare.py, configured with -DGGML_CUDA=ON; needs the CUDA toolkit),
#    llama-bench with all layers on the GPU on the same GGUFs.
# Everything it prints is also written to OUT_DIR/*.log; record the figures in
# docs/PERFORMANCE.md ("GPU").
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/gpu-check}
mkdir -p "$out"
export CARGO_TARGET_DIR=target/cuda

nvidia-smi | tee "$out/nvidia-smi.log"

# 1. The wheel and its runtime dependencies (pinned by the wheel's own metadata).
python3 -m pip install --quiet --disable-pip-version-check --upgrade \
    --target external/deps/cuda12 mlx-cuda-12==0.32.2 2>&1 | tee "$out/pip.log"

# 2. Build (the binary, and the fidelity test).
cargo build --release --features cuda 2>&1 | tee "$out/build.log"
bin=$CARGO_TARGET_DIR/release/mlx-engine
"$bin" models | head -1 | tee "$out/devices.log"

# 3. Generation on the GPU.
for model in qwen2.5-coder-0.5b qwen2.5-coder-1.5b; do
    "$bin" --device gpu --model "$model" --chat --temp 0 -n 64 \
        --prompt "Write a Python function that checks whether a number is prime." \
        2>&1 | tee "$out/generate-$model.log"
done

# 4. Fidelity against the float32 references, CPU and GPU.
MLX_ENGINE_TEST_GPU=1 cargo test --release --features cuda --test model_fidelity \
    -- --nocapture --test-threads 1 2>&1 | tee "$out/fidelity.log"

# 5. Speed.
for model in qwen2.5-coder-0.5b qwen2.5-coder-1.5b; do
    "$bin" bench --device gpu --model "$model" -p 128,512 -n 64 -o markdown \
        2>&1 | tee "$out/bench-$model.log"
    if [[ -n "${LLAMA_BENCH:-}" ]]; then
        gguf=$("$bin" pull "$model")
        "$LLAMA_BENCH" -m "$gguf" -ngl 99 -p 128,512 -n 64 -o md \
            2>&1 | tee "$out/llama-bench-$model.log"
    fi
done
echo "logs in $out"
