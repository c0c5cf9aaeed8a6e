#!/usr/bin/env bash
# Leak check of the C ABI: tests/c/leak_loop.c runs N generations (new sequence, prefill,
# sampler, 4 decode steps, snapshot, frees) on one loaded synthetic model under valgrind's
# memcheck, and prints valgrind's leak summary; "definitely lost" must be 0 bytes.
#
#   benches/leaks/valgrind.sh [N_CALLS=1000]
#
# Needs valgrind (apt-get install valgrind), cc, and the reference packages in target/pydeps
# (any test run installs them). Not in CI: 1,000 calls take minutes under valgrind.
set -euo pipefail
cd "$(dirname "$0")/../.."
calls="${1:-1000}"
out=target/leaks
mkdir -p "$out"

cargo build --release
model="$out/leak-llama.gguf"
if [ ! -f "$model" ]; then
  PYTHONPATH=target/pydeps python3 tests/reference/make_synthetic.py "$model" --arch llama \
    --quant Q4_0 --layers 2 --hidden 64 --heads 4 --kv-heads 2 --ffn 128 --vocab 512 --ctx 64
fi
mlx_lib=$(dirname "$(find external/deps/ -name 'libmlx.so*' | head -1)")
cc -std=c11 -Wall -Wextra -Werror -O1 -g -Iinclude tests/c/leak_loop.c -o "$out/leak_loop" \
  -Ltarget/release -lmlx_engine -Wl,-rpath,"$PWD/target/release" -Wl,-rpath,"$PWD/$mlx_lib"

# One kernel thread: valgrind serialises threads anyway. --errors-for-leak-kinds=definite
# makes the exit status 3 when anything is definitely lost.
MLX_ENGINE_THREADS=1 valgrind --tool=memcheck --leak-check=full --show-leak-kinds=definite \
  --errors-for-leak-kinds=definite --error-exitcode=3 --num-callers=30 \
  --log-file="$out/valgrind-$calls.log" "$out/leak_loop" "$model" "$calls"
status=$?
grep -E "definitely lost|indirectly lost|possibly lost|still reachable|ERROR SUMMARY" \
  "$out/valgrind-$calls.log"
echo "full log: $out/valgrind-$calls.log"
exit $status
