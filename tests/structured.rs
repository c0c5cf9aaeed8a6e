//! Grammar-constrained decoding on the real Qwen 0.5B, checked by independent validators
//! (`tests/reference/check_structured.py`: Python `jsonschema`, `re`, `lark`):
//! - JSON schemas (nested objects, arrays with minItems/maxItems, enums, bounded integers and
//!   numbers, string patterns and formats, required and optional properties,
//!   additionalProperties false) × prompts × seeds: every output parses and validates; a
//!   bounded schema ends by the grammar (an end-of-generation token), not the token limit;
//! - any JSON object, regular expressions (full match), a Lark arithmetic grammar (parses);
//! - the one-token check before the mask picks what the whole mask would (greedy);
//! - forced tokens are fast-forwarded and the output still validates;
//! - bad schemas, regexes and grammars are `Error::Grammar`, and the CLI exits nonzero;
//! - the backend's constrained sampler: a rollback of one token restores the grammar state
//!   (the same token is drawn again, also after the grammar finished), forced tokens are fed
//!   without sampling, the output matches and ends by an end-of-generation token.

mod common;

use mlx_engine::chat_template::{ChatMessage, ChatTemplate};
use mlx_engine::constraint::{Grammar, GrammarCompiler};
use mlx_engine::engine::{Engine, GenerateOptions, GenerateStats, LoadOptions};
use mlx_engine::sampler::{Sampler, SamplerParams};
use mlx_engine::tokenizer::Tokenizer;
use mlx_engine::Error;
use serde_json::{json, Value};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};

/// The model, its tokenizer, template and grammar compiler, loaded once per test binary.
struct Setup {
    engine: Engine,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    compiler: GrammarCompiler,
}

/// The shared setup, locked: the engine is not `Sync`, and runs one at a time suit CI's cores.
fn setup() -> MutexGuard<'static, Setup> {
    static SETUP: OnceLock<Mutex<Setup>> = OnceLock::new();
    let setup = SETUP.get_or_init(|| {
        let engine = Engine::load(&common::qwen_model(), &LoadOptions::default()).unwrap();
        let tokenizer = engine.tokenizer().unwrap();
        let source = engine
            .chat_template()
            .unwrap()
            .expect("Qwen has a template");
        let template = ChatTemplate::new(&source, "", "<|im_end|>").unwrap();
        let compiler = GrammarCompiler::new(&tokenizer).unwrap();
        Mutex::new(Setup {
            engine,
            tokenizer,
            template,
            compiler,
        })
    });
    setup.lock().unwrap_or_else(|e| e.into_inner())
}

/// One constrained generation.
struct Run {
    text: String,
    /// Ended by an end-of-generation token (not the token limit).
    stopped: bool,
    stats: GenerateStats,
}

/// Generates from a chat prompt under `grammar` at `temperature` with `seed`.
fn generate(grammar: &Grammar, prompt: &str, temperature: f32, seed: u64, max: usize) -> Run {
    let s = setup();
    let text = s
        .template
        .render(&[ChatMessage::user(prompt)], true)
        .unwrap();
    let ids = s.tokenizer.encode(&text, false).unwrap();
    let params = SamplerParams {
        temperature,
        seed: Some(seed),
        ..SamplerParams::default()
    };
    let mut sampler = Sampler::with_constraint(params, s.compiler.compile(grammar).unwrap());
    let options = GenerateOptions {
        max_new: max,
        ..GenerateOptions::default()
    };
    let (out, stats) = s
        .engine
        .generate(
            &ids,
            &mut sampler,
            &options,
            |t| s.tokenizer.is_eog(t),
            |_| true,
        )
        .unwrap();
    let stopped = out.last().is_some_and(|&t| s.tokenizer.is_eog(t));
    Run {
        text: s.tokenizer.decode(&out, true).unwrap(),
        stopped,
        stats,
    }
}

/// A case for the Python checker.
fn case(kind: &str, grammar: Value, run: &Run) -> Value {
    json!({"kind": kind, "grammar": grammar, "output": run.text, "complete": run.stopped})
}

/// Runs `check_structured.py` over `cases`; panics listing every failure.
fn check(cases: &[Value]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cases.json");
    std::fs::write(&path, serde_json::to_vec(cases).unwrap()).unwrap();
    let script = common::repo_root().join("tests/reference/check_structured.py");
    let out = common::python_with("requirements-structured.txt", "pydeps-structured")
        .arg(&script)
        .arg(&path)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "check_structured.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let verdicts: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(verdicts.len(), cases.len());
    let failures: Vec<String> = cases
        .iter()
        .zip(&verdicts)
        .filter(|(_, v)| v["ok"] != json!(true))
        .map(|(c, v)| format!("{} on {:?}: {}", c["kind"], c["output"], v["error"]))
        .collect();
    assert!(
        failures.is_empty(),
        "invalid outputs:\n{}",
        failures.join("\n")
    );
}

/// (schema, bounded): a bounded schema admits only finitely many outputs.
fn schemas() -> Vec<(Value, bool)> {
    vec![
        (
            json!({
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 20},
                    "address": {
                        "type": "object",
                        "properties": {
                            "city": {"type": "string", "maxLength": 20},
                            "zip": {"type": "string", "pattern": "^[0-9]{5}$"}
                        },
                        "required": ["city", "zip"],
                        "additionalProperties": false
                    }
                },
                "required": ["name", "address"],
                "additionalProperties": false
            }),
            true,
        ),
        (
            json!({
                "type": "object",
                "properties": {
                    "tags": {
                        "type": "array",
                        "items": {"type": "string", "maxLength": 12},
                        "minItems": 2,
                        "maxItems": 3
                    }
                },
                "required": ["tags"],
                "additionalProperties": false
            }),
            true,
        ),
        (
            json!({
                "type": "object",
                "properties": {
                    "color": {"enum": ["red", "green", "blue"]},
                    "size": {"type": "string", "enum": ["S", "M", "L", "XL"]},
                    "age": {"type": "integer", "minimum": 18, "maximum": 99},
                    "score": {"type": "number", "minimum": 0, "maximum": 1}
                },
                "required": ["color", "size", "age", "score"],
                "additionalProperties": false
            }),
            false,
        ),
        (
            json!({
                "type": "object",
                "properties": {
                    "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{3}$"},
                    "email": {"type": "string", "format": "email"},
                    "day": {"type": "string", "format": "date"}
                },
                "required": ["code", "email", "day"],
                "additionalProperties": false
            }),
            false,
        ),
        (
            json!({
                "type": "object",
                "properties": {
                    "title": {"type": "string", "maxLength": 24},
                    "year": {"type": "integer", "minimum": 1900, "maximum": 2030},
                    "rating": {"type": "integer", "minimum": 1, "maximum": 5},
                    "sequel": {"type": "boolean"}
                },
                "required": ["title", "year"],
                "additionalProperties": false
            }),
            true,
        ),
    ]
}

const JSON_PROMPTS: &[&str] = &[
    "Describe a fictional person as JSON.",
    "Reply with a JSON object for a product in our catalogue.",
];

#[test]
fn json_schema_outputs_validate_and_bounded_ones_stop() {
    if common::skip_requested() {
        return;
    }
    let mut cases = vec![];
    let mut length_ended = vec![];
    for (i, (schema, bounded)) in schemas().into_iter().enumerate() {
        let grammar = Grammar::json_schema(schema.clone()).unwrap();
        for (p, prompt) in JSON_PROMPTS.iter().enumerate() {
            let seed = (10 * i + p) as u64;
            let run = generate(&grammar, prompt, 0.7, seed, 120);
            if bounded && !run.stopped {
                length_ended.push(format!("schema {i}, prompt {p}: {:?}", run.text));
            }
            cases.push(case("json_schema", schema.clone(), &run));
        }
    }
    let run = generate(&Grammar::JsonObject, JSON_PROMPTS[0], 0.7, 3, 120);
    cases.push(case("json_object", Value::Null, &run));
    check(&cases);
    assert!(
        length_ended.is_empty(),
        "bounded schemas ended by the token limit:\n{}",
        length_ended.join("\n")
    );
}

#[test]
fn regex_outputs_fully_match() {
    if common::skip_requested() {
        return;
    }
    let patterns = [
        (r"\(\d{3}\) \d{3}-\d{4}", "What is the office phone number?"),
        (
            r"(yes|no), because [a-z ]{1,40}\.",
            "Is the sky blue? Answer briefly.",
        ),
        (
            r"[A-Z][a-z]{2,12}( [A-Z][a-z]{2,12}){0,2}",
            "Name a famous scientist.",
        ),
    ];
    let mut cases = vec![];
    for (rx, prompt) in patterns {
        for seed in 0..2 {
            let run = generate(&Grammar::Regex(rx.into()), prompt, 0.7, seed, 48);
            assert!(run.stopped, "{rx}: ended by the limit: {:?}", run.text);
            cases.push(case("regex", json!(rx), &run));
        }
    }
    check(&cases);
}

/// Arithmetic in the common subset of llguidance's Lark dialect and Python lark's.
const ARITHMETIC: &str = r#"
start: expr
expr: term (("+" | "-") term)*
term: factor (("*" | "/") factor)*
factor: NUMBER | "(" expr ")"
NUMBER: /[0-9]{1,3}/
"#;

#[test]
fn lark_arithmetic_outputs_parse() {
    if common::skip_requested() {
        return;
    }
    let grammar = Grammar::Lark(ARITHMETIC.into());
    let mut cases = vec![];
    let mut stopped = 0;
    for seed in 0..3 {
        let prompt = "Write an arithmetic expression that equals 42. Only the expression.";
        let run = generate(&grammar, prompt, 0.7, seed, 40);
        stopped += usize::from(run.stopped);
        cases.push(case("lark", json!(ARITHMETIC), &run));
    }
    check(&cases);
    assert!(
        stopped >= 2,
        "most runs should end by the grammar: {cases:?}"
    );
}

#[test]
fn the_first_pick_check_agrees_with_the_whole_mask() {
    if common::skip_requested() {
        return;
    }
    let s = setup();
    let (schema, _) = schemas().swap_remove(2);
    let grammar = Grammar::json_schema(schema).unwrap();
    let text = s
        .template
        .render(&[ChatMessage::user(JSON_PROMPTS[1])], true)
        .unwrap();
    let mut history = s.tokenizer.encode(&text, false).unwrap();
    let mut cache = s.engine.new_cache();
    let mut logits = s
        .engine
        .prefill(
            &history,
            &mut cache,
            512,
            mlx_engine::engine::LogitRows::Last,
        )
        .unwrap()
        .data;
    let mut sampler = Sampler::with_constraint(
        SamplerParams::greedy(),
        s.compiler.compile(&grammar).unwrap(),
    );
    let (mut masked_picks, mut steps) = (0, 0);
    for _ in 0..40 {
        steps += 1;
        // The whole mask on a clone: the greedy candidate is the masked argmax.
        let full = sampler.clone().candidates(&logits, &history).unwrap();
        let unconstrained = Sampler::new(SamplerParams::greedy())
            .sample(&logits, &history)
            .unwrap()
            .token;
        let token = sampler.sample(&logits, &history).unwrap().token;
        assert_eq!(full, vec![(token, 1.0)]);
        masked_picks += usize::from(token != unconstrained);
        history.push(token);
        if s.tokenizer.is_eog(token) {
            break;
        }
        logits = s
            .engine
            .decode(&[token], &mut [&mut cache])
            .unwrap()
            .to_vec::<f32>()
            .unwrap();
    }
    let stats = sampler.constraint().unwrap().stats();
    assert!(stats.fast > 0, "the first pick is usually allowed");
    // A whole mask was built exactly when the unconstrained argmax was refused.
    assert_eq!(stats.full.len(), masked_picks);
    assert_eq!(stats.fast + stats.full.len(), steps);
}

#[test]
fn forced_tokens_are_fed_without_sampling() {
    if common::skip_requested() {
        return;
    }
    let schema = json!({
        "type": "object",
        "properties": {
            "temperature_in_celsius": {"type": "integer", "minimum": -50, "maximum": 60},
            "observation_station_name": {"type": "string", "maxLength": 16}
        },
        "required": ["temperature_in_celsius", "observation_station_name"],
        "additionalProperties": false
    });
    let grammar = Grammar::json_schema(schema.clone()).unwrap();
    let run = generate(&grammar, "Report today's weather as JSON.", 0.0, 0, 80);
    assert!(run.stats.forced_tokens >= 4, "{}", run.stats.forced_tokens);
    assert!(run.stopped);
    check(&[case("json_schema", schema, &run)]);
}

#[test]
fn bad_grammars_are_errors() {
    if common::skip_requested() {
        return;
    }
    let s = setup();
    let compiler = &s.compiler;
    let bad = [
        Grammar::Regex("(".into()),
        Grammar::Regex("a{3,1}".into()),
        Grammar::Lark("start: undefined_rule".into()),
        Grammar::Lark("start: \"a".into()),
        Grammar::Lark(String::new()),
        Grammar::JsonSchema(json!({"type": "no-such-type"})),
        Grammar::JsonSchema(json!({"type": "object", "properties": {"a": {"$ref": "#/nope"}}})),
        Grammar::JsonSchema(json!({"type": "string", "minLength": 5, "maxLength": 2})),
    ];
    for grammar in &bad {
        match compiler.compile(grammar) {
            Err(Error::Grammar(message)) => assert!(!message.is_empty()),
            other => panic!("{grammar:?}: {other:?}"),
        }
    }
    for text in ["{", "[1, 2]", "\"a string\"", "3", "false"] {
        assert!(
            matches!(Grammar::json_schema_text(text), Err(Error::Grammar(_))),
            "{text}"
        );
    }
}

fn cli() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mlx-engine"));
    cmd.arg("-m").arg(common::qwen_model());
    cmd
}

#[test]
fn the_cli_constrains_and_refuses_bad_grammars() {
    if common::skip_requested() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let schema = json!({
        "type": "object",
        "properties": {"answer": {"type": "integer", "minimum": 0, "maximum": 100}},
        "required": ["answer"],
        "additionalProperties": false
    });
    let file = dir.path().join("schema.json");
    std::fs::write(&file, schema.to_string()).unwrap();
    let out = cli()
        .args([
            "--chat",
            "-p",
            "What is 6 times 7? Answer in JSON.",
            "--temp",
            "0",
            "-n",
            "30",
        ])
        .arg("--json-schema")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let value: Value = serde_json::from_str(text.trim()).unwrap();
    let answer = value["answer"].as_i64().unwrap();
    assert!((0..=100).contains(&answer), "{value}");
    assert_eq!(value.as_object().unwrap().len(), 1, "{value}");

    let bad: [&[&str]; 4] = [
        &["--regex", "("],
        &["--json-schema", "{not json"],
        &["--json-schema", r#"{"type": "no-such-type"}"#],
        &["--grammar", "/no/such/file.lark"],
    ];
    for args in bad {
        let out = cli()
            .args(["-p", "hi", "-n", "4"])
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[test]
fn the_backend_samples_under_a_grammar_and_rolls_back() {
    if common::skip_requested() {
        return;
    }
    use mlx_engine::backend::{Backend, BackendOptions, ModelSpec};
    let mut b = Backend::load(
        &ModelSpec::new(common::qwen_model()),
        &BackendOptions::default(),
    )
    .unwrap();
    assert!(b.capabilities().supports_structured_output);
    let bad = b.create_constrained_sampler(SamplerParams::greedy(), &Grammar::Regex("(".into()));
    assert!(matches!(bad, Err(Error::Grammar(_))), "{bad:?}");
    let grammar = Grammar::Regex("(yes|no), [a-z]{1,12}\\.".into());
    let sampler = b
        .create_constrained_sampler(SamplerParams::greedy(), &grammar)
        .unwrap();
    let text = b
        .apply_chat_template(&[ChatMessage::user("Is water wet? Answer briefly.")], true)
        .unwrap();
    let mut history = b.tokenize(&text, false).unwrap();
    let seq = b.create_seq();
    let mut logits = b.prefill(seq, &history, false).unwrap().data;
    let mut out = vec![];
    for _ in 0..24 {
        let token = b.sample(sampler, &logits, &history).unwrap().token;
        // Undo the commit and draw again: the same token, from the same grammar state.
        b.rollback_sampler(sampler, 1).unwrap();
        let again = b.sample(sampler, &logits, &history).unwrap().token;
        assert_eq!(again, token, "after {:?}", b.detokenize(&out, false));
        history.push(token);
        if b.eog_tokens().unwrap().contains(&token) {
            break;
        }
        out.push(token);
        let forced = b.forced_tokens(sampler).unwrap();
        let step: Vec<u32> = std::iter::once(token)
            .chain(forced.iter().copied())
            .collect();
        history.extend(&forced);
        out.extend(&forced);
        logits = b.prefill(seq, &step, false).unwrap().data;
    }
    let text = b.detokenize(&out, true).unwrap();
    let re_ok = (text.starts_with("yes, ") || text.starts_with("no, ")) && text.ends_with('.');
    assert!(re_ok, "{text:?}");
    assert!(
        b.eog_tokens().unwrap().contains(history.last().unwrap()),
        "{text:?}"
    );
}
