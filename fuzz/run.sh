#!/usr/bin/env bash
# Long fuzzing runs of the cargo-fuzz targets (libFuzzer, AddressSanitizer, debug assertions
# and overflow checks), not CI. Each target runs for SECONDS with a 2 GiB RSS/malloc limit and
# a 10 s per-input timeout, JOBS targets at a time under `nice`; new inputs go to
# fuzz/work/<target>/ (ignored by git), the committed seeds in fuzz/corpus/<target>/ are read.
# A crash, hang or OOM leaves its input in fuzz/artifacts/<target>/: turn it into a
# regression test (copy it into fuzz/corpus/<target>/, which tests/fuzz_corpora.rs runs on
# stable) and fix it. Logs, with the final `#N ... exec/s` line, are fuzz/work/<target>.log.
#
#   fuzz/run.sh [SECONDS=600] [JOBS=2] [TARGET...]
#
# Needs the nightly toolchain and `cargo install cargo-fuzz`.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-600}"
jobs="${2:-2}"
shift $(( $# > 2 ? 2 : $# ))
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi

cargo +nightly fuzz build "${targets[@]/#/}" 2>&1 | tail -1 || cargo +nightly fuzz build

run_one() {
  local target="$1"
  local status=0
  mkdir -p "work/$target" "artifacts/$target"
  # -detect_leaks=0: MLX keeps process-lifetime caches (a buffer pool, its streams) that
  # LeakSanitizer reports at exit; leaks are checked by benches/leaks/valgrind.sh instead.
  nice -n 10 cargo +nightly fuzz run "$target" "work/$target" "corpus/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -malloc_limit_mb=2048 -timeout=10 \
    -detect_leaks=0 -print_final_stats=1 >"work/$target.log" 2>&1 || status=$?
  echo "$target: exit $status; $(grep -E '^#[0-9]+' "work/$target.log" | tail -1)"
  return $status
}

failed=0
for ((i = 0; i < ${#targets[@]}; i += jobs)); do
  pids=()
  for target in "${targets[@]:i:jobs}"; do
    run_one "$target" &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do
    wait "$pid" || failed=1
  done
done
exit $failed
