//! Tokenizers built from tiny hand-made vocabularies, where every id can be worked out by hand.
//! (Parity with real vocabularies is in `tests/tokenizer_parity.rs`.)

use super::*;

/// A SentencePiece vocabulary: `<unk> <s> </s>`, the 256 byte tokens, then normal pieces with
/// scores chosen so `a b` merges before `▁ a`, and `▁ ab` last.
fn spm_vocab() -> Vocab {
    let mut tokens: Vec<String> = ["<unk>", "<s>", "</s>"].map(String::from).into();
    tokens.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
    let normal = [
        ("▁", -10.0),
        ("a", -10.0),
        ("b", -10.0),
        ("c", -10.0),
        ("▁a", -3.0),
    ];
    let normal = normal
        .into_iter()
        .chain([("ab", -2.0), ("▁ab", -1.0), ("é", -10.0)]);
    let mut scores = vec![0.0; tokens.len()];
    let mut types: Vec<i32> = (0..tokens.len()).map(|i| [2, 3, 3][i.min(2)]).collect();
    types[3..].fill(6);
    for (piece, score) in normal {
        tokens.push(piece.to_string());
        scores.push(score);
        types.push(1);
    }
    Vocab {
        model: "llama".into(),
        tokens,
        scores: Some(scores),
        token_types: Some(types),
        bos: Some(1),
        eos: Some(2),
        unk: Some(0),
        ..Vocab::default()
    }
}

/// A byte-level vocabulary over the letters a, b, space (`Ġ`) and newline (`Ċ`), with merges
/// `a b` and `Ġ a`, and a control token `<|end|>`.
fn gpt2_vocab() -> Vocab {
    let tokens = ["a", "b", "Ġ", "Ċ", "ab", "Ġa", "<|end|>"].map(String::from);
    Vocab {
        model: "gpt2".into(),
        pre: Some("qwen2".into()),
        tokens: tokens.into(),
        token_types: Some(vec![1, 1, 1, 1, 1, 1, 3]),
        merges: Some(vec!["a b".into(), "Ġ a".into()]),
        eos: Some(6),
        ..Vocab::default()
    }
}

fn spm() -> Tokenizer {
    Tokenizer::from_vocab(&spm_vocab()).expect("SentencePiece tokenizer")
}

fn id(tok: &Tokenizer, piece: &str) -> u32 {
    tok.token_to_id(piece).expect("piece in vocabulary")
}

#[test]
fn spm_merges_by_score_with_the_dummy_prefix() {
    let tok = spm();
    // "▁ab": a+b (-2) merges before ▁+a (-3), then ▁+ab (-1).
    assert_eq!(tok.encode("ab", false).unwrap(), [id(&tok, "▁ab")]);
    assert_eq!(tok.encode("ab", true).unwrap(), [1, id(&tok, "▁ab")]);
    let ids = tok.encode("a ab", false).unwrap();
    assert_eq!(ids, [id(&tok, "▁a"), id(&tok, "▁ab")]);
    assert_eq!(tok.decode(&ids, false).unwrap(), "a ab");
    assert_eq!(tok.encode("", true).unwrap(), [1], "empty text: BOS only");
}

#[test]
fn spm_falls_back_to_bytes_and_streams_whole_characters() {
    let tok = spm();
    let ids = tok.encode("c🦙é", false).unwrap();
    let llama = [0xF0u32, 0x9F, 0xA6, 0x99].map(|b| b + 3);
    assert_eq!(ids[..2], [id(&tok, "▁"), id(&tok, "c")]);
    assert_eq!(ids[2..6], llama);
    assert_eq!(ids[6], id(&tok, "é"));
    let mut dec = StreamDecoder::new(&tok, false);
    let out: Vec<Option<String>> = ids.iter().map(|&i| dec.push(i)).collect();
    let expect = [None, Some("c"), None, None, None, Some("🦙"), Some("é")];
    assert_eq!(out, expect.map(|s| s.map(String::from)));
    assert_eq!(dec.finish(), None);
}

#[test]
fn spm_control_tokens_are_matched_whole() {
    let tok = spm();
    let ids = tok.encode("a</s>b", false).unwrap();
    assert_eq!(ids, [id(&tok, "▁a"), 2, id(&tok, "▁"), id(&tok, "b")]);
    assert_eq!(tok.decode(&ids, false).unwrap(), "a</s>b");
    assert_eq!(tok.decode(&ids, true).unwrap(), "a b");
    assert!(tok.is_eog(2) && !tok.is_eog(1));
}

#[test]
fn stream_decoder_keeps_or_drops_the_leading_space() {
    let tok = spm();
    let ab = id(&tok, "▁ab");
    assert_eq!(
        StreamDecoder::new(&tok, true).push(ab).as_deref(),
        Some("ab")
    );
    assert_eq!(
        StreamDecoder::continuing(&tok, true).push(ab).as_deref(),
        Some(" ab")
    );
    let mut dec = StreamDecoder::new(&tok, true);
    assert_eq!(dec.push(1), None, "BOS skipped");
    assert_eq!(dec.push(ab).as_deref(), Some("ab"));
    assert_eq!(
        dec.push(ab).as_deref(),
        Some(" ab"),
        "only the first space goes"
    );
}

#[test]
fn stream_decoder_replaces_broken_bytes() {
    let tok = spm();
    let mut dec = StreamDecoder::new(&tok, false);
    assert_eq!(dec.push(0xF0 + 3), None);
    assert_eq!(dec.push(id(&tok, "a")).as_deref(), Some("\u{FFFD}a"));
    assert_eq!(dec.push(0xE2 + 3), None);
    assert_eq!(dec.finish().as_deref(), Some("\u{FFFD}"));
    assert_eq!(dec.push(9999).as_deref(), Some("\u{FFFD}"), "an unknown id");
    assert!(tok.decode(&[9999], false).is_err());
}

#[test]
fn gpt2_byte_level_bpe() {
    let tok = Tokenizer::from_vocab(&gpt2_vocab()).expect("byte-level tokenizer");
    let ids = tok.encode("ab a\n<|end|>", true).unwrap();
    assert_eq!(ids, [4, 5, 3, 6], "no BOS for gpt2 by default");
    assert_eq!(tok.decode(&ids, false).unwrap(), "ab a\n<|end|>");
    assert_eq!(tok.decode(&ids, true).unwrap(), "ab a\n");
    assert_eq!(tok.token_to_piece(5).as_deref(), Some(" a"));
    assert!(tok.is_eog(6));
    assert_eq!(tok.vocab_size(), 7);
}

#[test]
fn bad_vocabularies_are_errors() {
    let mut v = spm_vocab();
    v.model = "bert".into();
    assert!(matches!(
        Tokenizer::from_vocab(&v),
        Err(Error::Unsupported(_))
    ));
    let mut v = spm_vocab();
    v.scores = Some(vec![0.0; 3]);
    assert!(
        Tokenizer::from_vocab(&v).is_err(),
        "scores of the wrong length"
    );
    let mut v = spm_vocab();
    v.eos = Some(100_000);
    assert!(
        Tokenizer::from_vocab(&v).is_err(),
        "eos outside the vocabulary"
    );
    let mut v = gpt2_vocab();
    v.merges = None;
    assert!(Tokenizer::from_vocab(&v).is_err(), "gpt2 without merges");
    let mut v = gpt2_vocab();
    v.merges = Some(vec!["ab".into()]);
    assert!(Tokenizer::from_vocab(&v).is_err(), "malformed merge");
    assert!(Tokenizer::from_vocab(&Vocab::default()).is_err(), "empty");
}
