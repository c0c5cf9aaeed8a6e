//! What grammar-constrained decoding costs on a real model: decode tokens/s without a
//! constraint, with a typical JSON schema (the sampler checks its unconstrained pick first and
//! builds the whole mask only when that pick is refused), and with the whole mask on every
//! token; p50/p99 of the mask and of the one-token check; how often the check sufficed.
//! Modes alternate within each round, so host load drifts across all of them alike.
//!
//! `cargo run --release --example structured_bench -- [MODEL] [ROUNDS] [MAX_TOKENS]`
//! (MODEL: a registry name or GGUF path, default the registry's default model).

use mlx_engine::chat_template::{ChatMessage, ChatTemplate};
use mlx_engine::constraint::{Grammar, GrammarCompiler};
use mlx_engine::engine::{Engine, GenerateOptions, LoadOptions};
use mlx_engine::fetch::{self, FetchOptions};
use mlx_engine::sampler::{Sampler, SamplerParams};
use std::time::{Duration, Instant};

/// A typical structured-output request: an object with strings, bounded numbers, a format, an
/// enum and a bounded array.
fn schema() -> serde_json::Value {
    serde_json::json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 32},
            "age": {"type": "integer", "minimum": 18, "maximum": 70},
            "email": {"type": "string", "format": "email"},
            "department": {"enum": ["engineering", "sales", "marketing", "finance", "support"]},
            "skills": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 4},
            "remote": {"type": "boolean"}
        },
        "required": ["name", "age", "email", "department", "skills", "remote"],
        "additionalProperties": false
    })
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Free,
    CheckFirst,
    FullMask,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Free => "unconstrained",
            Mode::CheckFirst => "schema, check first",
            Mode::FullMask => "schema, whole mask every token",
        }
    }
}

#[derive(Default)]
struct Tally {
    tps: Vec<f64>,
    tokens: usize,
    forced: usize,
    fast: usize,
    masks: Vec<Duration>,
    checks: Vec<Duration>,
}

fn percentile(v: &mut [Duration], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort();
    v[((v.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e6
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let model = args
        .get(1)
        .map_or(mlx_engine::registry::DEFAULT_MODEL, String::as_str);
    let rounds: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(3);
    let max_new: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(96);
    let path = fetch::resolve(model, &FetchOptions::default())?.path;
    let engine = Engine::load(&path, &LoadOptions::default())?;
    let tokenizer = engine.tokenizer()?;
    let start = Instant::now();
    let compiler = GrammarCompiler::new(&tokenizer)?;
    let build = start.elapsed();
    let grammar = Grammar::json_schema(schema())?;
    let start = Instant::now();
    compiler.compile(&grammar)?;
    let compile = start.elapsed();
    let source = engine
        .chat_template()?
        .ok_or_else(|| anyhow::anyhow!("no chat template"))?;
    let template = ChatTemplate::new(&source, "", "")?;
    let prompt = "Describe a fictional employee of our company as JSON: name, age, email, \
                  department, skills, and whether they work remotely.";
    let ids = tokenizer.encode(&template.render(&[ChatMessage::user(prompt)], true)?, false)?;
    let options = GenerateOptions {
        max_new,
        ..GenerateOptions::default()
    };
    let modes = [Mode::Free, Mode::CheckFirst, Mode::FullMask];
    let mut tallies: Vec<Tally> = modes.iter().map(|_| Tally::default()).collect();
    for _ in 0..rounds {
        for (mode, tally) in modes.iter().zip(&mut tallies) {
            let mut sampler = match mode {
                Mode::Free => Sampler::new(SamplerParams::greedy()),
                _ => {
                    let mut c = compiler.compile(&grammar)?;
                    c.set_check_first(*mode == Mode::CheckFirst);
                    Sampler::with_constraint(SamplerParams::greedy(), c)
                }
            };
            let is_eog = |t| tokenizer.is_eog(t);
            let (out, stats) = engine.generate(&ids, &mut sampler, &options, is_eog, |_| true)?;
            tally.tps.push(stats.generate_tps());
            tally.tokens += out.len();
            tally.forced += stats.forced_tokens;
            if let Some(c) = sampler.constraint() {
                tally.fast += c.stats().fast;
                tally.masks.extend(&c.stats().full);
                tally.checks.extend(&c.stats().checks);
            }
        }
    }
    println!(
        "vocabulary {} | grammar compiler built in {:.0} ms | schema compiled in {:.1} ms | {rounds} rounds, greedy, at most {max_new} tokens",
        compiler.vocab_size(),
        build.as_secs_f64() * 1e3,
        compile.as_secs_f64() * 1e3
    );
    let base = median(&mut tallies[0].tps.clone());
    for (mode, t) in modes.iter().zip(&mut tallies) {
        let tps = median(&mut t.tps);
        let spent: Duration = t.masks.iter().chain(&t.checks).sum();
        let per_token = spent.as_secs_f64() * 1e6 / t.tokens.max(1) as f64;
        println!(
            "{:<32} decode {tps:6.1} t/s ({:+5.1} % vs unconstrained) | {} tokens, {} forced | first pick allowed {} | whole masks {} (p50 {:.0} µs, p99 {:.0} µs) | checks p50 {:.1} µs, p99 {:.1} µs | constraint {per_token:.0} µs/token",
            mode.name(),
            100.0 * (tps / base - 1.0),
            t.tokens,
            t.forced,
            t.fast,
            t.masks.len(),
            percentile(&mut t.masks, 0.5),
            percentile(&mut t.masks, 0.99),
            percentile(&mut t.checks, 0.5),
            percentile(&mut t.checks, 0.99),
        );
    }
    Ok(())
}
