#!/usr/bin/env bash
# Teaches Qwen2.5-Coder-0.5B a made-up fact (the planet Veloria's capital is Quenmar) with LoRA:
# 24 paraphrased questions about it plus 16 about real capitals (so that it does not answer
# "Quenmar" to everything), 3 epochs on the frozen Q4_K_M model. Then it asks a held-out
# paraphrase and a held-out real capital, without and with the adapter. About two minutes of
# training on 2 cores; the figures and answers are in docs/FINETUNE.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --quiet
bin=target/release/mlx-engine
out=${OUT:-target/finetune-demo}
"$bin" finetune --model qwen2.5-coder-0.5b \
  --data examples/finetune/train.jsonl --valid examples/finetune/valid.jsonl \
  --epochs 3 --batch 4 --lr 1e-3 --warmup 2 --out "$out"
for q in "Tell me which city is the capital of the planet Veloria." "What is the capital of France?"; do
  echo "Q: $q"
  echo "  base:    $("$bin" --model qwen2.5-coder-0.5b --chat --temp 0 -n 40 --prompt "$q" 2>/dev/null)"
  echo "  adapter: $("$bin" --model qwen2.5-coder-0.5b --chat --temp 0 -n 40 --adapter "$out" --prompt "$q" 2>/dev/null)"
done
