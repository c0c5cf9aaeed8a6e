//! Token-id parity with independent tokenizers, on the strings in
//! `tests/data/tokenizer_strings.json` (code, unicode, CJK, emoji, whitespace, numbers,
//! special-token text, the empty string, long lines):
//! - Qwen2 (`gpt2` vocabulary, pre `qwen2`): the real GGUF's vocabulary against transformers'
//!   slow, pure-Python `Qwen2Tokenizer` (`tests/reference/tokenize_qwen.py`);
//! - Llama 2 / TinyLlama (`llama` SentencePiece vocabulary): the vocabulary embedded in the npm
//!   package `llama-tokenizer-js@1.2.2`, against that package (`tests/reference/tokenize_llama.mjs`),
//!   plus the package's own test cases.
//!
//! The references need python3 (`gguf`, `transformers<5`), node and npm, and the Qwen GGUF. When
//! one is missing the tests fail and say what to install, unless `MLX_ENGINE_SKIP_REFERENCE=1`.

mod common;

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use mlx_engine::loader::GgufFile;
use mlx_engine::tokenizer::{StreamDecoder, Tokenizer, Vocab};
use serde_json::{json, Value};
use unicode_normalization::UnicodeNormalization;

/// Set to `1` to skip the reference comparisons when their tools are not installed.
const SKIP_ENV: &str = "MLX_ENGINE_SKIP_REFERENCE";
/// Overrides where the Qwen GGUF is looked for.
const QWEN_ENV: &str = "MLX_ENGINE_QWEN_GGUF";
/// The model file under `~/.cache/mlx-engine/models/`.
/// The npm package the Llama reference runs, as `tests/reference/package.json` pins it.
const LLAMA_PACKAGE: &str = "llama-tokenizer-js";

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The test strings, shared by the Rust side and both references.
fn strings() -> &'static [String] {
    static STRINGS: OnceLock<Vec<String>> = OnceLock::new();
    STRINGS.get_or_init(|| {
        let path = manifest_dir().join("tests/data/tokenizer_strings.json");
        let text = std::fs::read_to_string(&path).expect("tests/data/tokenizer_strings.json");
        serde_json::from_str(&text).expect("a JSON array of strings")
    })
}

/// `None` when the references are to be skipped; panics with `setup` otherwise.
fn reference_missing(what: &str, setup: &str) -> Option<std::convert::Infallible> {
    if std::env::var(SKIP_ENV).is_ok_and(|v| v == "1") {
        eprintln!("skipping {what}: {SKIP_ENV}=1");
        return None;
    }
    panic!(
        "{what} is not available: {setup}\n(set {SKIP_ENV}=1 to skip the reference comparisons)"
    );
}

/// Runs a command; its stderr on failure.
fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    match out.status.success() {
        true => Ok(()),
        false => Err(format!(
            "{cmd:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )),
    }
}

/// A stamp over the inputs of a reference run, so unchanged inputs reuse its output.
fn stamp(inputs: &[&[u8]]) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    inputs.hash(&mut h);
    format!("{:016x}", h.finish())
}

/// Whether `dir` holds the output of a run with this `stamp`; otherwise clears it for one.
fn is_current(dir: &Path, stamp: &str) -> bool {
    let file = dir.join("stamp");
    if std::fs::read_to_string(&file).is_ok_and(|s| s == stamp) {
        return true;
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("reference output dir");
    false
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("an id list")
        .iter()
        .map(|x| x.as_u64().expect("an id") as u32)
        .collect()
}

fn id_lists(v: &Value) -> Vec<Vec<u32>> {
    v.as_array()
        .expect("a list of id lists")
        .iter()
        .map(ids)
        .collect()
}

fn string_list(v: &Value) -> Vec<String> {
    serde_json::from_value(v.clone()).expect("a list of strings")
}

/// Compares our ids with the reference's for every string; prints and returns the count.
fn compare(name: &str, tok: &Tokenizer, expected: &[Vec<u32>]) -> usize {
    let strings = strings();
    assert_eq!(
        expected.len(),
        strings.len(),
        "{name}: one reference per string"
    );
    let mut failures = vec![];
    for (s, want) in strings.iter().zip(expected) {
        let got = tok.encode(s, false).expect("encode");
        if &got != want {
            failures.push(format!("{s:?}\n  ours: {got:?}\n  ref:  {want:?}"));
        }
    }
    let same = strings.len() - failures.len();
    println!("{name} parity: {same}/{}", strings.len());
    assert!(
        failures.is_empty(),
        "{name}: {} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
    same
}

/// Streams `ids` through a [`StreamDecoder`], returning the concatenated text.
fn stream(tok: &Tokenizer, ids: &[u32], skip_special: bool) -> String {
    let mut dec = StreamDecoder::new(tok, skip_special);
    let mut text = String::new();
    for &id in ids {
        text.extend(dec.push(id));
    }
    text.extend(dec.finish());
    text
}

// ---------------------------------------------------------------------------------------------
// Qwen2: the real GGUF vocabulary against transformers' slow Qwen2Tokenizer
// ---------------------------------------------------------------------------------------------

/// The Qwen reference output.
struct QwenRef {
    vocab: Vocab,
    tokenizer: Tokenizer,
    ids: Vec<Vec<u32>>,
    decoded: Vec<String>,
    dir: PathBuf,
}

fn qwen_gguf() -> PathBuf {
    match std::env::var_os(QWEN_ENV) {
        Some(path) => PathBuf::from(path),
        None => common::qwen_model(),
    }
}

/// Runs `tokenize_qwen.py` (once per input change) and reads what it wrote.
fn qwen_ref() -> Option<&'static QwenRef> {
    static REF: OnceLock<Option<QwenRef>> = OnceLock::new();
    REF.get_or_init(load_qwen_ref).as_ref()
}

fn load_qwen_ref() -> Option<QwenRef> {
    let gguf = qwen_gguf();
    if !gguf.exists() {
        reference_missing(
            "the Qwen GGUF",
            &format!(
                "expected {} (or set {QWEN_ENV}); see shared/README.md",
                gguf.display()
            ),
        )?;
    }
    let check = "import gguf, transformers; assert int(transformers.__version__.split('.')[0]) < 5";
    let deps = run(common::python().args(["-c", check]));
    if let Err(e) = deps {
        reference_missing(
            "python3 with gguf and transformers<5 (v5 has no slow tokenizer)",
            &format!("python3 -m pip install --user gguf 'transformers<5'\n{e}"),
        )?;
    }
    let script = manifest_dir().join("tests/reference/tokenize_qwen.py");
    let strings_path = manifest_dir().join("tests/data/tokenizer_strings.json");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("qwen-reference");
    let inputs = [
        std::fs::read(&script).expect("tokenize_qwen.py"),
        std::fs::read(&strings_path).expect("strings"),
        gguf.to_string_lossy().as_bytes().to_vec(),
    ];
    let stamp = stamp(&inputs.iter().map(Vec::as_slice).collect::<Vec<_>>());
    if !is_current(&dir, &stamp) {
        run(common::python()
            .arg(&script)
            .arg(&gguf)
            .arg(&strings_path)
            .arg(&dir))
        .unwrap_or_else(|e| panic!("the Qwen reference failed: {e}"));
        std::fs::write(dir.join("stamp"), &stamp).expect("stamp");
    }
    let vocab = qwen_vocab(&read_json(&dir.join("qwen_vocab.json")));
    let out = read_json(&dir.join("qwen_ids.json"));
    Some(QwenRef {
        tokenizer: Tokenizer::from_vocab(&vocab).expect("Qwen tokenizer"),
        vocab,
        ids: id_lists(&out["ids"]),
        decoded: string_list(&out["decoded"]),
        dir,
    })
}

/// Our `Vocab` from the GGUF metadata the script dumped.
fn qwen_vocab(v: &Value) -> Vocab {
    let id = |key: &str| v[key].as_u64().map(|x| x as u32);
    Vocab {
        model: v["model"].as_str().expect("model").to_string(),
        pre: v["pre"].as_str().map(String::from),
        tokens: string_list(&v["tokens"]),
        scores: None,
        token_types: Some(serde_json::from_value(v["token_types"].clone()).expect("types")),
        merges: Some(string_list(&v["merges"])),
        bos: id("bos"),
        eos: id("eos"),
        eot: id("eot"),
        unk: id("unk"),
        pad: id("pad"),
        add_bos: v["add_bos"].as_bool(),
        add_eos: v["add_eos"].as_bool(),
        add_space_prefix: None,
    }
}

#[test]
fn qwen_ids_match_transformers_slow_tokenizer() {
    let Some(r) = qwen_ref() else { return };
    assert_eq!(r.tokenizer.vocab_size(), 151_936);
    assert!(compare("Qwen", &r.tokenizer, &r.ids) >= 200);
}

#[test]
fn qwen_round_trips_and_matches_reference_decode() {
    let Some(r) = qwen_ref() else { return };
    for ((s, ids), want) in strings().iter().zip(&r.ids).zip(&r.decoded) {
        let text = r.tokenizer.decode(ids, false).expect("decode");
        assert_eq!(text, s.nfc().collect::<String>(), "round trip of {s:?}");
        assert_eq!(&text, want, "decode of {s:?}");
        assert_eq!(stream(&r.tokenizer, ids, false), text, "streamed {s:?}");
    }
}

#[test]
fn qwen_from_tokenizer_json_matches() {
    let Some(r) = qwen_ref() else { return };
    let tok = Tokenizer::from_file(r.dir.join("tokenizer.json")).expect("tokenizer.json");
    compare("Qwen tokenizer.json", &tok, &r.ids);
    let ids = tok
        .encode("<|im_start|>user\nhi<|im_end|>", true)
        .expect("encode");
    assert_eq!(
        tok.decode(&ids, false).expect("decode"),
        "<|im_start|>user\nhi<|im_end|>"
    );
    assert_eq!(tok.decode(&ids, true).expect("decode"), "user\nhi");
}

/// `Vocab::from_gguf` reads the same vocabulary the Python `gguf` package does.
#[test]
fn qwen_vocab_from_gguf_matches_the_reference_dump() {
    let Some(r) = qwen_ref() else { return };
    let file = GgufFile::open(&qwen_gguf()).expect("open the GGUF");
    let vocab = Vocab::from_gguf(&file).expect("tokenizer metadata");
    assert_eq!(vocab, r.vocab);
    let tok = Tokenizer::from_gguf(&file).expect("tokenizer");
    assert_eq!(
        tok.encode("<|im_start|>user", false).expect("encode"),
        [151_644, 872]
    );
}

#[test]
fn qwen_special_tokens() {
    let Some(r) = qwen_ref() else { return };
    let tok = &r.tokenizer;
    assert_eq!((tok.bos(), tok.eos()), (Some(151_643), Some(151_645)));
    assert_eq!(
        tok.encode("The capital of France is", true)
            .expect("encode"),
        [785, 6722, 315, 9625, 374]
    );
    assert!(
        tok.is_eog(151_645) && tok.is_eog(151_643),
        "<|im_end|> and <|endoftext|> end"
    );
    assert!(!tok.is_eog(151_644), "<|im_start|> does not end");
    assert_eq!(tok.token_to_piece(9707).as_deref(), Some("Hello"));
    assert_eq!(tok.id_to_token(1879), Some("Ġworld"));
    assert_eq!(tok.token_to_piece(1879).as_deref(), Some(" world"));
    assert!(
        tok.decode(&[151_936], false).is_err(),
        "an id past the vocabulary"
    );
    assert_eq!(r.vocab.tokens.len(), 151_936);
}

#[test]
fn qwen_stream_holds_back_partial_characters() {
    let Some(r) = qwen_ref() else { return };
    let tok = &r.tokenizer;
    let ids = tok.encode("🦙 llama 镇", false).expect("encode");
    let mut dec = StreamDecoder::new(tok, false);
    let pieces: Vec<String> = ids.iter().filter_map(|&id| dec.push(id)).collect();
    assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{pieces:?}");
    assert_eq!(
        pieces.concat() + &dec.finish().unwrap_or_default(),
        "🦙 llama 镇"
    );
}

// ---------------------------------------------------------------------------------------------
// Llama 2 / TinyLlama: the vocabulary of llama-tokenizer-js against that package
// ---------------------------------------------------------------------------------------------

/// The Llama reference output.
struct LlamaRef {
    pieces: Vec<String>,
    merges: Vec<String>,
    tokenizer: Tokenizer,
    ids: Vec<Vec<u32>>,
    package_tests: Vec<(String, Vec<u32>)>,
    package_decode: Vec<(Vec<u32>, String)>,
}

/// Installs the npm package (once) and runs `tokenize_llama.mjs` (once per input change).
fn llama_ref() -> Option<&'static LlamaRef> {
    static REF: OnceLock<Option<LlamaRef>> = OnceLock::new();
    REF.get_or_init(load_llama_ref).as_ref()
}

fn load_llama_ref() -> Option<LlamaRef> {
    for tool in ["node", "npm"] {
        if let Err(e) = run(Command::new(tool).arg("--version")) {
            reference_missing(tool, &format!("install node and npm\n{e}"))?;
        }
    }
    let reference = manifest_dir().join("tests/reference");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("llama-reference");
    let package_json = std::fs::read(reference.join("package.json")).expect("package.json");
    let script = std::fs::read(reference.join("tokenize_llama.mjs")).expect("tokenize_llama.mjs");
    let strings_path = manifest_dir().join("tests/data/tokenizer_strings.json");
    let strings_bytes = std::fs::read(&strings_path).expect("strings");
    let stamp = stamp(&[&package_json, &script, &strings_bytes]);
    let out = dir.join("llama_ids.json");
    if !is_current(&dir, &stamp) {
        std::fs::write(dir.join("package.json"), &package_json).expect("package.json");
        let install = run(Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--prefix"])
            .arg(&dir));
        if let Err(e) = install {
            reference_missing(
                LLAMA_PACKAGE,
                &format!("npm install failed (registry access?)\n{e}"),
            )?;
        }
        let package = dir.join("node_modules").join(LLAMA_PACKAGE);
        run(Command::new("node")
            .arg(reference.join("tokenize_llama.mjs"))
            .arg(&package)
            .arg(&strings_path)
            .arg(&out))
        .unwrap_or_else(|e| panic!("the Llama reference failed: {e}"));
        std::fs::write(dir.join("stamp"), &stamp).expect("stamp");
    }
    let v = read_json(&out);
    let pieces = string_list(&v["pieces"]);
    let merges = string_list(&v["merges"]);
    let tokenizer = Tokenizer::from_vocab(&llama_vocab(&pieces, &merges)).expect("Llama tokenizer");
    let pairs = |key: &str| -> Vec<(Value, Value)> {
        v[key]
            .as_array()
            .expect(key)
            .iter()
            .map(|t| (t["text"].clone(), t["ids"].clone()))
            .collect()
    };
    Some(LlamaRef {
        package_tests: pairs("package_tests")
            .iter()
            .map(|(t, i)| (t.as_str().expect("text").into(), ids(i)))
            .collect(),
        package_decode: pairs("package_decode")
            .iter()
            .map(|(t, i)| (ids(i), t.as_str().expect("text").into()))
            .collect(),
        ids: id_lists(&v["ids"]),
        pieces,
        merges,
        tokenizer,
    })
}

/// The `Vocab` a Llama 2 GGUF holds, from the package's pieces and merge rules. The package has
/// no scores; a piece's score is minus the rank of the first rule that makes it, which orders
/// merges exactly as the package does. Ids 0-2 are `<unk>`, `<s>`, `</s>`, 3-258 the bytes.
fn llama_vocab(pieces: &[String], merges: &[String]) -> Vocab {
    let index: std::collections::HashMap<&str, usize> = pieces
        .iter()
        .enumerate()
        .map(|(i, p)| (p.as_str(), i))
        .collect();
    let mut scores = vec![f32::MIN; pieces.len()];
    for (rank, rule) in merges.iter().enumerate() {
        let id = index[rule.replacen(' ', "", 1).as_str()];
        scores[id] = scores[id].max(-(rank as f32));
    }
    let token_types = (0..pieces.len())
        .map(|id| match id {
            0 => 2,
            1 | 2 => 3,
            3..=258 => 6,
            _ => 1,
        })
        .collect();
    Vocab {
        model: "llama".into(),
        tokens: pieces.to_vec(),
        scores: Some(scores),
        token_types: Some(token_types),
        bos: Some(1),
        eos: Some(2),
        unk: Some(0),
        add_bos: Some(true),
        ..Vocab::default()
    }
}

/// What SentencePiece decodes `s` back to: a literal `▁` in text is a space to it.
fn spm_text(s: &str) -> String {
    s.replace('▁', " ")
}

#[test]
fn llama_ids_match_llama_tokenizer_js() {
    let Some(r) = llama_ref() else { return };
    assert_eq!(r.tokenizer.vocab_size(), 32_000);
    assert!(compare("Llama", &r.tokenizer, &r.ids) >= 200);
}

#[test]
fn llama_passes_the_packages_own_tests() {
    let Some(r) = llama_ref() else { return };
    assert!(
        r.package_tests.len() >= 10,
        "recorded {} cases",
        r.package_tests.len()
    );
    for (text, want) in &r.package_tests {
        assert_eq!(
            &r.tokenizer.encode(text, true).expect("encode"),
            want,
            "encode {text:?}"
        );
    }
    for (ids, want) in &r.package_decode {
        assert_eq!(
            &r.tokenizer.decode(ids, true).expect("decode"),
            want,
            "decode {ids:?}"
        );
    }
    println!(
        "llama-tokenizer-js own tests: {} encode + {} decode cases pass",
        r.package_tests.len(),
        r.package_decode.len()
    );
}

#[test]
fn llama_round_trips() {
    let Some(r) = llama_ref() else { return };
    for (s, ids) in strings().iter().zip(&r.ids) {
        let text = r.tokenizer.decode(ids, false).expect("decode");
        assert_eq!(text, spm_text(s), "round trip");
        assert_eq!(stream(&r.tokenizer, ids, false), text, "streamed {s:?}");
        let with_bos = r.tokenizer.encode(s, true).expect("encode");
        assert_eq!(with_bos[0], 1, "BOS first");
        let shown = r.tokenizer.decode(&with_bos, false).expect("decode");
        assert_eq!(shown, format!("<s>{}", spm_text(s)), "BOS shown");
        let skipped = r.tokenizer.decode(&with_bos, true).expect("decode");
        assert_eq!(
            skipped,
            r.tokenizer.decode(ids, true).expect("decode"),
            "BOS skipped"
        );
    }
}

#[test]
fn llama_stream_spaces_and_bytes() {
    let Some(r) = llama_ref() else { return };
    let tok = &r.tokenizer;
    let ids = tok.encode(" Hello  world 🦙\n", true).expect("encode");
    let mut dec = StreamDecoder::new(tok, true);
    let pieces: Vec<String> = ids.iter().filter_map(|&id| dec.push(id)).collect();
    assert_eq!(
        pieces.first().map(String::as_str),
        Some(" Hello"),
        "one space kept of two"
    );
    assert!(
        pieces.contains(&"🦙".to_string()),
        "the 4 byte tokens come out as one: {pieces:?}"
    );
    assert_eq!(pieces.concat(), " Hello  world 🦙\n");
    let paris = tok.encode("The capital is Paris", false).expect("encode");
    let mut cont = StreamDecoder::continuing(tok, true);
    assert_eq!(
        cont.push(*paris.last().expect("a token")).as_deref(),
        Some(" Paris")
    );
    assert!(tok.is_eog(2) && !tok.is_eog(1));
    assert_eq!(tok.token_to_piece(13).as_deref(), Some("\n"));
    assert_eq!(tok.id_to_token(13), Some("<0x0A>"));
}

/// A Llama-style `tokenizer.json` (as Hugging Face writes one for a SentencePiece BPE model) of
/// the same vocabulary, loaded by `Tokenizer::from_file`.
#[test]
fn llama_from_tokenizer_json_matches() {
    let Some(r) = llama_ref() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, llama_tokenizer_json(r).to_string()).expect("write");
    let tok = Tokenizer::from_file(&path).expect("load");
    assert_eq!((tok.bos(), tok.eos()), (Some(1), Some(2)));
    compare("Llama tokenizer.json", &tok, &r.ids);
    for (s, ids) in strings().iter().zip(&r.ids) {
        assert_eq!(tok.decode(ids, false).expect("decode"), spm_text(s));
    }
    for (text, want) in &r.package_tests {
        assert_eq!(
            &tok.encode(text, true).expect("encode"),
            want,
            "encode {text:?}"
        );
    }
}

fn llama_tokenizer_json(r: &LlamaRef) -> Value {
    let vocab: serde_json::Map<String, Value> = r
        .pieces
        .iter()
        .enumerate()
        .map(|(i, p)| (p.clone(), json!(i)))
        .collect();
    let added = |id: u32, content: &str| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false,
               "rstrip": false, "normalized": false, "special": true})
    };
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [added(0, "<unk>"), added(1, "<s>"), added(2, "</s>")],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
        "pre_tokenizer": null,
        "post_processor": {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>",
            "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": true,
            "byte_fallback": true, "vocab": vocab, "merges": r.merges}
    })
}

/// Gemma 3's SentencePiece vocabulary (262,144 pieces, no space prefix, byte fallback, special
/// turn tokens) from the real GGUF against ids produced by llama.cpp's tokenizer
/// (llama-cpp-python 0.3.36, `tokenize(text, add_bos=False, special=True)`) on 2026-11-23.
#[test]
fn gemma_ids_match_llama_cpp() {
    if common::skip_requested() {
        return;
    }
    let file = GgufFile::open(&common::gemma_model()).unwrap();
    let tok = Tokenizer::from_vocab(&Vocab::from_gguf(&file).unwrap()).unwrap();
    let cases: [(&str, &[u32]); 6] = [
        (
            "The quick brown fox jumps over the lazy dog. In 1889, the Eiffel Tower was completed \
             in Paris; it stood 300 metres tall and was, for forty-one years, the tallest man-made \
             structure in the world.",
            &[
                818, 3823, 8864, 37423, 38167, 1024, 506, 31770, 4799, 236761, 799, 236743, 236770,
                236828, 236828, 236819, 236764, 506, 94648, 25822, 691, 7723, 528, 9079, 236793,
                625, 15032, 236743, 236800, 236771, 236771, 30762, 13030, 532, 691, 236764, 573,
                28959, 236772, 811, 1518, 236764, 506, 92900, 880, 236772, 12901, 3904, 528, 506,
                1902, 236761,
            ],
        ),
        ("Hello, world!", &[9259, 236764, 1902, 236888]),
        (
            "  leading spaces and\ttabs\n\nnewlines",
            &[138, 26016, 9952, 532, 255968, 39218, 108, 208697],
        ),
        (
            "def fib(n):\n    return n if n < 2 else fib(n-1) + fib(n-2)",
            &[
                2063, 10779, 236769, 236749, 1473, 107, 140, 2060, 538, 768, 538, 655, 236743,
                236778, 1663, 10779, 236769, 236749, 236772, 236770, 236768, 900, 10779, 236769,
                236749, 236772, 236778, 236768,
            ],
        ),
        (
            "Ünïcödé — 日本語のテキスト 🙂",
            &[
                238194, 236749, 238527, 236755, 55515, 236859, 2192, 33375, 238582, 236945, 95830,
                57235,
            ],
        ),
        (
            "<start_of_turn>user\nHi<end_of_turn>",
            &[105, 2364, 107, 10979, 106],
        ),
    ];
    for (text, want) in cases {
        let got = tok.encode(text, false).unwrap();
        assert_eq!(got, want, "{text:?}");
        let back = tok.decode(&got, false).unwrap();
        assert_eq!(back, text, "decode of {text:?}");
    }
    assert_eq!(tok.encode("Hi", true).unwrap(), [2, 10979], "BOS first");
    assert!(tok.is_eog(106), "<end_of_turn> ends a generation");
}
