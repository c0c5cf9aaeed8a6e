//! The backend contract on small random llama models: KV snapshots round-trip exactly and
//! reject bad buffers, prefix copies equal recomputation, batched decode equals decoding each
//! sequence alone, ids are checked, a backend can move to another thread, and the text side
//! (tokenize, pieces, detokenize, template, end ids) follows the synthetic vocabulary.
//!
//! Tolerances: `EXACT_TOL` (1e-4) where both sides run the same ops in the same order on the
//! same KV (differences come only from float32 reassociation inside MLX kernels);
//! `BATCH_TOL` (1e-3, as in tests/kv_consistency.rs) where batching changes the matmul shape
//! (the CPU kernels are batch-invariant, so what remains is MLX's attention and reductions).

mod common;

use mlx_engine::backend::{snapshot, Backend, BackendOptions, ModelSpec, SamplerParams, SeqId};
use mlx_engine::kv_cache::KvDtype;
use mlx_engine::mlx::transforms;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

const EXACT_TOL: f32 = 1e-4;
const BATCH_TOL: f32 = 1e-3;
const PROMPT: [u32; 13] = [1, 17, 42, 99, 3, 250, 7, 311, 64, 5, 480, 12, 90];
/// Arguments of `make_synthetic.py` for a 2-layer llama with grouped-query attention.
const SYNTHETIC_SHAPE: &str = "--arch llama --quant Q8_0 --layers 2 --hidden 256 --heads 4 \
    --kv-heads 2 --ffn 512 --vocab 512 --ctx 256";

/// MLX is driven from one test thread at a time.
static MLX: Mutex<()> = Mutex::new(());

fn mlx_lock() -> MutexGuard<'static, ()> {
    MLX.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A small random llama GGUF (`seed` picks the weights; `extra` changes the shape), written
/// once per test process under cargo's target tmp dir.
fn synthetic(seed: u32, extra: &[&str]) -> PathBuf {
    let seed_arg = seed.to_string();
    let mut args: Vec<&str> = SYNTHETIC_SHAPE.split(' ').collect();
    args.extend(["--seed", &seed_arg]);
    args.extend(extra);
    common::synthetic(&format!("backend-{seed}{}", extra.join("")), &args)
}

fn load(path: &PathBuf, max_context: Option<usize>) -> Backend {
    let options = BackendOptions {
        max_context,
        ..BackendOptions::default()
    };
    Backend::load(&ModelSpec::new(path), &options).unwrap()
}

fn small_backend() -> Backend {
    load(&synthetic(0, &[]), None)
}

fn argmax(row: &[f32]) -> u32 {
    (0..row.len())
        .max_by(|&a, &b| row[a].total_cmp(&row[b]))
        .unwrap() as u32
}

/// Greedy-decodes `n` tokens starting from `logits`; returns the tokens and every logits row.
fn greedy(
    backend: &mut Backend,
    seq: SeqId,
    mut logits: Vec<f32>,
    n: usize,
) -> (Vec<u32>, Vec<Vec<f32>>) {
    let (mut tokens, mut rows) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let next = argmax(&logits);
        tokens.push(next);
        logits = backend.decode(&[(seq, next)]).unwrap().remove(0);
        rows.push(logits.clone());
    }
    (tokens, rows)
}

#[test]
fn serialize_then_hydrate_continues_like_an_uninterrupted_run() {
    let _mlx = mlx_lock();
    let mut backend = small_backend();
    let whole = backend.create_seq();
    let first = backend.prefill(whole, &PROMPT, false).unwrap().data;
    let (reference, reference_rows) = greedy(&mut backend, whole, first.clone(), 10);

    let part = backend.create_seq();
    let logits = backend.prefill(part, &PROMPT, false).unwrap().data;
    let (head, head_rows) = greedy(&mut backend, part, logits, 4);
    let bytes = backend.serialize(part).unwrap();
    backend.free_seq(part).unwrap();
    let restored = backend.hydrate(&bytes).unwrap();
    assert_eq!(backend.seq_len(restored).unwrap(), PROMPT.len() + 4);
    let (tail, tail_rows) = greedy(&mut backend, restored, head_rows[3].clone(), 6);

    assert_eq!([head, tail].concat(), reference);
    for (row, reference_row) in tail_rows.iter().zip(&reference_rows[4..]) {
        assert!(common::max_diff(row, reference_row) <= EXACT_TOL);
    }
    let again = backend.hydrate(&bytes).unwrap();
    assert_eq!(
        backend.serialize(again).unwrap(),
        bytes,
        "serialize(hydrate(x)) == x"
    );
    let empty = backend.create_seq();
    let empty = backend.hydrate(&backend.serialize(empty).unwrap()).unwrap();
    assert_eq!(backend.seq_len(empty).unwrap(), 0);
    let logits = backend.prefill(empty, &PROMPT, false).unwrap();
    assert!(common::max_diff(logits.last().unwrap(), &first) <= EXACT_TOL);
}

#[test]
fn snapshots_record_the_cache_dtype_and_convert_between_dtypes() {
    let _mlx = mlx_lock();
    let path = synthetic(0, &[]);
    let load_as = |kv_dtype| {
        let options = BackendOptions {
            kv_dtype,
            ..BackendOptions::default()
        };
        Backend::load(&ModelSpec::new(&path), &options).unwrap()
    };
    let snapshot_of = |backend: &mut Backend| {
        let seq = backend.create_seq();
        backend.prefill(seq, &PROMPT, false).unwrap();
        backend.serialize(seq).unwrap()
    };
    let (mut half, mut full) = (load_as(KvDtype::F16), load_as(KvDtype::F32));
    let (bytes16, bytes32) = (snapshot_of(&mut half), snapshot_of(&mut full));
    let dtype_code = |b: &[u8]| u32::from_le_bytes(b[12..16].try_into().unwrap());
    assert_eq!((dtype_code(&bytes16), dtype_code(&bytes32)), (1, 0));
    let framing = 72 + 32; // header and checksum
    assert_eq!(bytes32.len() - framing, 2 * (bytes16.len() - framing));
    let (snap16, snap32) = (
        snapshot::decode(&bytes16).unwrap(),
        snapshot::decode(&bytes32).unwrap(),
    );
    assert_eq!((snap16.dtype, snap32.dtype), (KvDtype::F16, KvDtype::F32));

    // float16 into a float32 cache widens exactly.
    let widened = full.hydrate(&bytes16).unwrap();
    let widened = snapshot::decode(&full.serialize(widened).unwrap()).unwrap();
    assert_eq!(widened.dtype, KvDtype::F32);
    assert!(widened.keys == snap16.keys && widened.values == snap16.values);
    // float32 into a float16 cache rounds each element to nearest (half an ulp: 2^-11 relative).
    let rounded = half.hydrate(&bytes32).unwrap();
    let rounded = snapshot::decode(&half.serialize(rounded).unwrap()).unwrap();
    let within = |got: &[f32], want: &[f32]| {
        got.iter()
            .zip(want)
            .all(|(g, w)| (g - w).abs() <= w.abs() * 2f32.powi(-11) + 2f32.powi(-25))
    };
    assert!(within(&rounded.keys, &snap32.keys) && within(&rounded.values, &snap32.values));
    assert!(rounded.keys != snap32.keys, "float16 storage rounds");
}

#[test]
fn copy_prefix_then_decode_equals_recomputing_the_prefix() {
    let _mlx = mlx_lock();
    let mut backend = small_backend();
    let source = backend.create_seq();
    backend.prefill(source, &PROMPT, false).unwrap();
    for n in [1, 5, 12] {
        let copy = backend.create_seq();
        backend.prefill(copy, &[400, 401], false).unwrap(); // overwritten by the copy
        backend.copy_prefix(source, copy, n).unwrap();
        assert_eq!(backend.seq_len(copy).unwrap(), n);
        let copied = backend.decode(&[(copy, PROMPT[n])]).unwrap().remove(0);

        let fresh = backend.create_seq();
        backend.prefill(fresh, &PROMPT[..n], false).unwrap();
        let recomputed = backend.decode(&[(fresh, PROMPT[n])]).unwrap().remove(0);
        let d = common::max_diff(&copied, &recomputed);
        assert!(d <= EXACT_TOL, "prefix {n}: max |Δlogit| {d}");
    }
    assert_eq!(
        backend.seq_len(source).unwrap(),
        PROMPT.len(),
        "the source is unchanged"
    );
    assert!(backend
        .copy_prefix(source, source, PROMPT.len() + 1)
        .is_err());
}

#[test]
fn batch_of_four_sequences_equals_each_decoded_alone() {
    let _mlx = mlx_lock();
    let mut backend = small_backend();
    let lengths = [2, 5, 9, 13];
    let steps = 8;
    let mut alone = Vec::new();
    for &len in &lengths {
        let seq = backend.create_seq();
        let logits = backend.prefill(seq, &PROMPT[..len], false).unwrap().data;
        alone.push(greedy(&mut backend, seq, logits, steps));
    }

    let seqs: Vec<SeqId> = lengths.iter().map(|_| backend.create_seq()).collect();
    let mut logits: Vec<Vec<f32>> = seqs
        .iter()
        .zip(lengths)
        .map(|(&s, len)| backend.prefill(s, &PROMPT[..len], false).unwrap().data)
        .collect();
    let mut tokens = vec![Vec::new(); seqs.len()];
    for step in 0..steps {
        let batch: Vec<(SeqId, u32)> = seqs
            .iter()
            .zip(&logits)
            .map(|(&s, l)| (s, argmax(l)))
            .collect();
        batch
            .iter()
            .zip(&mut tokens)
            .for_each(|(&(_, t), out)| out.push(t));
        logits = backend.decode(&batch).unwrap();
        for (b, row) in logits.iter().enumerate() {
            let d = common::max_diff(row, &alone[b].1[step]);
            assert!(
                d <= BATCH_TOL,
                "sequence {b}, step {step}: max |Δlogit| {d}"
            );
        }
    }
    for (b, (alone_tokens, _)) in alone.iter().enumerate() {
        assert_eq!(
            &tokens[b], alone_tokens,
            "sequence {b} (prompt length {})",
            lengths[b]
        );
        assert_eq!(backend.seq_len(seqs[b]).unwrap(), lengths[b] + steps);
    }
}

#[test]
fn hydrate_rejects_truncated_foreign_and_corrupted_buffers() {
    let _mlx = mlx_lock();
    let mut backend = small_backend();
    let seq = backend.create_seq();
    backend.prefill(seq, &PROMPT[..6], false).unwrap();
    let bytes = backend.serialize(seq).unwrap();
    let expect_err = |backend: &mut Backend, buf: &[u8], needle: &str| {
        let err = backend
            .hydrate(buf)
            .expect_err("a bad snapshot must be rejected")
            .to_string();
        assert!(
            err.contains(needle),
            "error '{err}' should mention '{needle}'"
        );
    };
    for len in [0, 7, 40, 72, bytes.len() / 2, bytes.len() - 1] {
        expect_err(&mut backend, &bytes[..len], "truncated");
    }
    let mut longer = bytes.clone();
    longer.push(0);
    expect_err(&mut backend, &longer, "trailing");
    for at in [100, bytes.len() / 2, bytes.len() - 1] {
        let mut flipped = bytes.clone();
        flipped[at] ^= 0x04;
        expect_err(&mut backend, &flipped, "checksum");
    }
    let mut bad_magic = bytes.clone();
    bad_magic[0] = b'X';
    expect_err(&mut backend, &bad_magic, "magic");
    let mut bad_version = bytes.clone();
    bad_version[8] = 9;
    expect_err(&mut backend, &bad_version, "version");
    let mut huge = bytes.clone();
    huge[64..72].copy_from_slice(&u64::MAX.to_le_bytes());
    expect_err(&mut backend, &huge, "overflow");

    let mut same_shape = load(&synthetic(1, &[]), None);
    expect_err(&mut same_shape, &bytes, "different model");
    let mut other_shape = load(&synthetic(0, &["--layers", "3"]), None);
    expect_err(&mut other_shape, &bytes, "different model");
    assert_eq!(
        backend.seq_count(),
        1,
        "no failed hydrate leaves a sequence behind"
    );
}

#[test]
fn unknown_freed_and_repeated_ids_and_full_contexts_are_errors() {
    let _mlx = mlx_lock();
    let mut backend = load(&synthetic(0, &[]), Some(16));
    let a = backend.create_seq();
    let b = backend.create_seq();
    backend.prefill(a, &PROMPT[..4], false).unwrap();
    let never = SeqId(9999);
    assert!(backend
        .decode(&[(never, 1)])
        .unwrap_err()
        .to_string()
        .contains("unknown sequence id 9999"));
    assert!(backend.prefill(never, &[1], false).is_err());
    assert!(backend.serialize(never).is_err());
    assert!(backend.copy_prefix(a, never, 1).is_err());
    assert!(backend.copy_prefix(never, a, 1).is_err());
    assert!(backend
        .decode(&[(a, 1), (a, 2)])
        .unwrap_err()
        .to_string()
        .contains("twice"));
    assert!(backend.decode(&[]).is_err());
    assert!(backend.prefill(a, &[], false).is_err());

    backend.free_seq(b).unwrap();
    assert!(backend.decode(&[(a, 1), (b, 1)]).is_err());
    assert!(backend.free_seq(b).is_err());
    assert!(backend.reset_seq(b).is_err());
    assert_eq!(
        backend.seq_len(a).unwrap(),
        4,
        "a failed batch leaves its sequences unchanged"
    );

    let c = backend.create_seq();
    assert_ne!(c, b, "ids are never reused");
    let full = backend.prefill(c, &[3; 17], false).unwrap_err();
    assert!(
        matches!(
            full,
            mlx_engine::Error::ContextFull {
                needed: 17,
                limit: 16
            }
        ),
        "{full}"
    );
    backend.prefill(c, &[3; 16], false).unwrap();
    assert!(matches!(
        backend.decode(&[(a, 1), (c, 1)]),
        Err(mlx_engine::Error::ContextFull { .. })
    ));
    assert_eq!(
        (backend.seq_len(a).unwrap(), backend.seq_len(c).unwrap()),
        (4, 16)
    );
    assert!(
        backend.prefill(a, &[600], false).is_err(),
        "token outside the vocabulary"
    );
    assert_eq!(
        backend.seq_len(a).unwrap(),
        4,
        "a failed prefill leaves the sequence unchanged"
    );
}

#[test]
fn all_logits_prefill_and_truncate_support_speculative_decoding() {
    let _mlx = mlx_lock();
    let mut backend = small_backend();
    assert!(backend.capabilities().supports_speculative_decoding);
    let seq = backend.create_seq();
    backend.prefill(seq, &PROMPT[..5], false).unwrap();
    let draft = &PROMPT[5..9];
    let scored = backend.prefill(seq, draft, true).unwrap();
    assert_eq!(
        (scored.rows, scored.vocab),
        (4, backend.config().vocab_size)
    );

    // Accept two draft tokens: roll back the rest, then decode the third.
    backend.truncate_seq(seq, 7).unwrap();
    let after_rollback = backend.decode(&[(seq, draft[2])]).unwrap().remove(0);
    let d = common::max_diff(&after_rollback, scored.row(2).unwrap());
    assert!(
        d <= BATCH_TOL,
        "decode after truncate vs the draft's row: max |Δlogit| {d}"
    );

    let all = backend.engine().logits_all(&PROMPT[..9]).unwrap();
    let d = common::max_diff(&scored.data, &all[5 * scored.vocab..]);
    assert!(
        d <= BATCH_TOL,
        "all-logits prefill vs logits_all: max |Δlogit| {d}"
    );

    // Chunked prefill (2 positions per pass) returns the same rows.
    let options = BackendOptions {
        prefill_chunk: 2,
        ..BackendOptions::default()
    };
    let mut chunked = Backend::load(&ModelSpec::new(synthetic(0, &[])), &options).unwrap();
    let seq = chunked.create_seq();
    let rows = chunked.prefill(seq, &PROMPT[..9], true).unwrap();
    assert_eq!(rows.rows, 9);
    let d = common::max_diff(&rows.data, &all);
    assert!(
        d <= BATCH_TOL,
        "chunked all-logits prefill vs logits_all: max |Δlogit| {d}"
    );
}

#[test]
fn samplers_are_created_used_and_freed() {
    let _mlx = mlx_lock();
    let mut backend = small_backend();
    let seq = backend.create_seq();
    let logits = backend.prefill(seq, &PROMPT, false).unwrap().data;
    let params = SamplerParams {
        temperature: 0.0,
        n_logprobs: 3,
        ..SamplerParams::default()
    };
    let sampler = backend.create_sampler(params).unwrap();
    let sampled = backend.sample(sampler, &logits, &PROMPT).unwrap();
    assert_eq!(sampled.token, argmax(&logits));
    assert_eq!(sampled.top_logprobs.len(), 3);
    assert_eq!(sampled.top_logprobs[0].0, sampled.token);
    backend.free_sampler(sampler).unwrap();
    assert!(backend.sample(sampler, &logits, &PROMPT).is_err());
    assert!(backend.free_sampler(sampler).is_err());
}

#[test]
fn a_backend_moves_to_another_thread() {
    let _mlx = mlx_lock();
    let mut backend = small_backend();
    let seq = backend.create_seq();
    let here = backend.prefill(seq, &PROMPT, false).unwrap().data;
    let (backend, there) = std::thread::spawn(move || {
        let mut backend = backend;
        let other = backend.create_seq();
        let there = backend.prefill(other, &PROMPT, false).unwrap().data;
        backend.decode(&[(seq, 5), (other, 5)]).unwrap();
        (backend, there)
    })
    .join()
    .unwrap();
    assert!(common::max_diff(&here, &there) <= EXACT_TOL);
    assert!(backend.is_ready());
    assert!(backend.device_info().unwrap().active_bytes > 0);
    assert_eq!(backend.seq_len(seq).unwrap(), PROMPT.len() + 1);
}

/// Batched decode throughput for 1, 2 and 4 sequences. Run with
/// `cargo test --release --test backend -- --ignored --nocapture`; set `MLXE_BENCH_MODEL` to a
/// GGUF path to measure a real model (default: a synthetic 8-layer, 1024-wide Q8_0 llama).
#[test]
#[ignore = "benchmark; prints tokens/s"]
fn batched_decode_throughput() {
    let _mlx = mlx_lock();
    let path = std::env::var("MLXE_BENCH_MODEL")
        .ok()
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            synthetic(
                0,
                &[
                    "--layers", "8", "--hidden", "1024", "--heads", "16", "--ffn", "2816",
                ],
            )
        });
    let mut backend = load(&path, Some(1024));
    let steps: usize = std::env::var("MLXE_BENCH_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(32);
    println!(
        "model {} ({:?})",
        path.display(),
        backend.device_info().unwrap().execution
    );
    for batch in [1usize, 2, 4] {
        let seqs: Vec<SeqId> = (0..batch).map(|_| backend.create_seq()).collect();
        for &s in &seqs {
            backend.prefill(s, &PROMPT, false).unwrap();
        }
        backend
            .decode(&seqs.iter().map(|&s| (s, 1)).collect::<Vec<_>>())
            .unwrap(); // warm-up
        let start = Instant::now();
        for step in 0..steps {
            let batch_tokens: Vec<(SeqId, u32)> =
                seqs.iter().map(|&s| (s, (step % 256) as u32)).collect();
            backend.decode(&batch_tokens).unwrap();
        }
        let secs = start.elapsed().as_secs_f64();
        let rate = (batch * steps) as f64 / secs;
        println!(
            "batch {batch}: {rate:.1} tokens/s ({:.1} ms/step)",
            1e3 * secs / steps as f64
        );
        seqs.into_iter().for_each(|s| backend.free_seq(s).unwrap());
        transforms::clear_cache().unwrap();
    }
}

#[test]
fn the_text_side_follows_the_sentencepiece_vocabulary_and_zephyr_layout() {
    let _mlx = mlx_lock();
    let mut backend = small_backend();
    // make_synthetic.py gives "hello" and "world" whole SentencePiece pieces ("▁hello", …).
    let ids = backend.tokenize("hello world", false).unwrap();
    assert_eq!(ids.len(), 2, "{ids:?}");
    let with_bos = backend.tokenize("hello world", true).unwrap();
    assert_eq!(
        with_bos[1..],
        ids[..],
        "BOS first (llama vocabularies add it)"
    );
    // Pieces keep SentencePiece's space; decoding the whole drops the dummy prefix.
    let pieces: Vec<&[u8]> = ids
        .iter()
        .map(|&t| backend.token_piece(t).unwrap())
        .collect();
    assert_eq!(pieces, [&b" hello"[..], &b" world"[..]]);
    assert_eq!(backend.detokenize(&ids, true).unwrap(), "hello world");
    let vocab = backend.config().vocab_size as u32;
    let err = backend.token_piece(vocab).unwrap_err().to_string();
    assert!(err.contains(&vocab.to_string()), "{err}");
    assert!(backend.detokenize(&[vocab], false).is_err());
    // Zephyr's layout, as the template in make_synthetic.py spells it.
    let messages = [mlx_engine::chat_template::ChatMessage::user("hello world")];
    let text = backend.apply_chat_template(&messages, true).unwrap();
    assert_eq!(text, "<|user|>\nhello world</s>\n<|assistant|>\n");
    let eos = backend.tokenize("</s>", false).unwrap();
    assert_eq!(eos.len(), 1);
    assert!(backend.eog_tokens().unwrap().contains(&eos[0]));
    // A bias on a token outside the vocabulary is refused when the sampler is made.
    let params = SamplerParams {
        logit_bias: vec![(vocab, 1.0)],
        ..SamplerParams::greedy()
    };
    let err = backend.create_sampler(params).unwrap_err().to_string();
    assert!(err.contains("logit_bias"), "{err}");
}
