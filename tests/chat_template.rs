//! Chat templates rendered against expected strings written out by hand from each format's
//! documented layout: Qwen 2.5's (copied from the real GGUF's `tokenizer.chat_template` into
//! `tests/data/qwen2.5_chat_template.jinja`, checked against the file below), Llama 3's,
//! ChatML, Zephyr (as TinyLlama-Chat uses it) and Gemma's; then hostile templates, each of which
//! must fail with a named limit in bounded time.

mod common;

use std::time::{Duration, Instant};

use mlx_engine::chat_template::{
    ChatMessage, ChatTemplate, GEMMA_TEMPLATE, MAX_OUTPUT_BYTES, MAX_RECURSION,
};
use mlx_engine::loader::GgufFile;
use mlx_engine::Error;

const QWEN_DEFAULT_SYSTEM: &str = "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. \
                                   You are a helpful assistant.<|im_end|>\n";

/// How long a hostile template may take to fail: generous for a loaded CI machine (each takes
/// milliseconds to a second here).
const HOSTILE_TIME_BOUND: Duration = Duration::from_secs(10);

fn qwen() -> ChatTemplate {
    let source = include_str!("data/qwen2.5_chat_template.jinja");
    ChatTemplate::new(source, "<|endoftext|>", "<|im_end|>").expect("Qwen template compiles")
}

fn zephyr() -> ChatTemplate {
    let source = include_str!("data/zephyr_chat_template.jinja");
    ChatTemplate::new(source, "<s>", "</s>").expect("Zephyr template compiles")
}

fn llama3() -> ChatTemplate {
    let source = include_str!("data/llama3_chat_template.jinja");
    ChatTemplate::new(source, "<|begin_of_text|>", "<|eot_id|>").expect("Llama 3 template compiles")
}

fn chatml() -> ChatTemplate {
    let source = include_str!("data/chatml_chat_template.jinja");
    ChatTemplate::new(source, "<s>", "<|im_end|>").expect("ChatML template compiles")
}

fn gemma() -> ChatTemplate {
    ChatTemplate::new(GEMMA_TEMPLATE, "<bos>", "<eos>").expect("Gemma template compiles")
}

fn render(t: &ChatTemplate, messages: &[ChatMessage], prompt: bool) -> String {
    t.render(messages, prompt).expect("renders")
}

#[test]
fn qwen_adds_default_system_and_generation_prompt() {
    let got = render(&qwen(), &[ChatMessage::user("Hi")], true);
    let want =
        format!("{QWEN_DEFAULT_SYSTEM}<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    assert_eq!(got, want);
}

#[test]
fn qwen_system_message_multi_turn_without_prompt() {
    let messages = [
        ChatMessage::system("Be brief."),
        ChatMessage::user("Hi"),
        ChatMessage::assistant("Hello!"),
        ChatMessage::user("What is 2+2?"),
    ];
    let want = "<|im_start|>system\nBe brief.<|im_end|>\n\
                <|im_start|>user\nHi<|im_end|>\n\
                <|im_start|>assistant\nHello!<|im_end|>\n\
                <|im_start|>user\nWhat is 2+2?<|im_end|>\n";
    assert_eq!(render(&qwen(), &messages, false), want);
    let with_prompt = render(&qwen(), &messages, true);
    assert_eq!(with_prompt, format!("{want}<|im_start|>assistant\n"));
}

#[test]
fn qwen_tool_results_are_grouped_into_one_user_turn() {
    let messages = [
        ChatMessage::user("Weather?"),
        ChatMessage::new("tool", "sunny"),
        ChatMessage::new("tool", "20C"),
    ];
    let want = format!(
        "{QWEN_DEFAULT_SYSTEM}<|im_start|>user\nWeather?<|im_end|>\n<|im_start|>user\n\
         <tool_response>\nsunny\n</tool_response>\n<tool_response>\n20C\n</tool_response><|im_end|>\n"
    );
    assert_eq!(render(&qwen(), &messages, false), want);
}

#[test]
fn zephyr_single_turn_with_prompt() {
    let got = render(&zephyr(), &[ChatMessage::user("Hi")], true);
    assert_eq!(got, "<|user|>\nHi</s>\n<|assistant|>\n");
}

#[test]
fn zephyr_system_multi_turn() {
    let messages = [
        ChatMessage::system("You are a pirate."),
        ChatMessage::user("Hello"),
        ChatMessage::assistant("Arr!"),
        ChatMessage::user("Where is the gold?"),
    ];
    let want = "<|system|>\nYou are a pirate.</s>\n<|user|>\nHello</s>\n\
                <|assistant|>\nArr!</s>\n<|user|>\nWhere is the gold?</s>\n";
    assert_eq!(render(&zephyr(), &messages, false), want);
    assert_eq!(
        render(&zephyr(), &messages, true),
        format!("{want}<|assistant|>\n")
    );
}

#[test]
fn empty_conversation() {
    assert_eq!(render(&zephyr(), &[], true), "");
    // Qwen's template reads `messages[0]['role']`, which fails in Jinja2 too.
    assert!(matches!(qwen().render(&[], true), Err(Error::Template(_))));
}

#[test]
fn bos_token_and_python_string_methods() {
    let source = "{{ bos_token }}{% for m in messages %}\
                  {% if m.content.strip().startswith('/') %}[cmd:{{ m.content.strip()[1:] }}]\
                  {% else %}{{ m.content.split(',') | join('|') }}{% endif %}{% endfor %}\
                  {{ ' x '.rstrip() }}{{ 'ab'.upper() }}";
    let t = ChatTemplate::new(source, "<s>", "</s>").expect("compiles");
    let got = t.render(
        &[ChatMessage::user("  /help "), ChatMessage::user("a,b,c")],
        false,
    );
    assert_eq!(got.expect("renders"), "<s>[cmd:help]a|b|c xAB");
}

#[test]
fn loop_controls_and_namespace() {
    let source = "{% set ns = namespace(n=0, last='') %}\
                  {% for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}\
                  {% if loop.index > 3 %}{% break %}{% endif %}\
                  {% set ns.n = ns.n + 1 %}{% set ns.last = m.content %}{% endfor %}\
                  {{ ns.n }}:{{ ns.last }}";
    let t = ChatTemplate::new(source, "", "").expect("compiles");
    let messages = ["s", "a", "b", "c", "d"].map(|c| match c {
        "s" => ChatMessage::system(c),
        _ => ChatMessage::user(c),
    });
    assert_eq!(t.render(&messages, false).expect("renders"), "2:b");
}

#[test]
fn tojson_writes_like_python_json_dumps() {
    let source =
        "{{ messages[0] | tojson }} {{ {'a': [1, 2.5, true, none], 'b': '<é\">'} | tojson }}\
                  {{ [] | tojson }}{{ {'k': [1]} | tojson(indent=2) }}";
    let t = ChatTemplate::new(source, "", "").expect("compiles");
    let got = t
        .render(&[ChatMessage::user("hi")], false)
        .expect("renders");
    let want = "{\"role\": \"user\", \"content\": \"hi\"} \
                {\"a\": [1, 2.5, true, null], \"b\": \"<é\\\">\"}[]{\n  \"k\": [\n    1\n  ]\n}";
    assert_eq!(got, want);
}

#[test]
fn strftime_now_gives_a_date() {
    let t = ChatTemplate::new("{{ strftime_now('%Y-%m-%d') }}", "", "").expect("compiles");
    let got = t.render(&[], false).expect("renders");
    let digits: Vec<usize> = got.split('-').map(str::len).collect();
    assert_eq!(digits, [4, 2, 2], "{got}");
    assert!(got.starts_with("20"), "{got}");
}

#[test]
fn errors_are_errors_not_panics() {
    let syntax = ChatTemplate::new("{% for m in messages %}{{ m.content }", "", "");
    assert!(matches!(syntax, Err(Error::Template(_))), "{syntax:?}");
    let raising = ChatTemplate::new(
        "{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}",
        "",
        "",
    )
    .expect("compiles");
    let err = raising
        .render(&[ChatMessage::assistant("x")], false)
        .unwrap_err();
    assert!(err.to_string().contains("first must be user"), "{err}");
    assert!(raising.render(&[ChatMessage::user("x")], false).is_ok());
    for bad in [
        "{{ messages[0].content.nosuch() }}",
        "{{ 1 / 0 }}",
        "{{ messages[5].content.strip() }}",
    ] {
        let t = ChatTemplate::new(bad, "", "").expect("compiles");
        assert!(t.render(&[ChatMessage::user("x")], false).is_err(), "{bad}");
    }
}

#[test]
fn qwen_fixture_is_the_real_gguf_template() {
    let gguf = GgufFile::open(&common::qwen_model()).expect("Qwen GGUF opens");
    let real = gguf
        .get_str("tokenizer.chat_template")
        .expect("has a template");
    let fixture = include_str!("data/qwen2.5_chat_template.jinja");
    assert_eq!(real.trim_end(), fixture.trim_end());
}

#[test]
fn llama3_headers_and_trimmed_content() {
    let messages = [
        ChatMessage::system("Be brief."),
        ChatMessage::user("  Hi \n"),
        ChatMessage::assistant("Hello!"),
        ChatMessage::user("What is 2+2?"),
    ];
    let want = "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>\
                <|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>\
                <|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>\
                <|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>";
    assert_eq!(render(&llama3(), &messages, false), want);
    assert_eq!(
        render(&llama3(), &messages, true),
        format!("{want}<|start_header_id|>assistant<|end_header_id|>\n\n")
    );
    // BOS once, before the first message whatever its role.
    assert_eq!(
        render(&llama3(), &[ChatMessage::user("Hi")], true),
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\n"
    );
}

#[test]
fn chatml_turns() {
    let messages = [
        ChatMessage::system("Be brief."),
        ChatMessage::user("Hi"),
        ChatMessage::assistant("Hello!"),
    ];
    let want = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
                <|im_start|>assistant\nHello!<|im_end|>\n";
    assert_eq!(render(&chatml(), &messages, false), want);
    assert_eq!(
        render(&chatml(), &messages[1..2], true),
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn gemma_turns_without_a_system_message() {
    let messages = [
        ChatMessage::user("Hi"),
        ChatMessage::assistant(" Hello. "),
        ChatMessage::user("Bye"),
    ];
    assert_eq!(
        render(&gemma(), &messages, true),
        "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n\
         <start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
    );
}

#[test]
fn long_conversations_render_under_the_limits() {
    let turns: Vec<ChatMessage> = (0..200)
        .map(|i| match i % 2 {
            0 => ChatMessage::user(format!("question {i}")),
            _ => ChatMessage::assistant(format!("answer {i}")),
        })
        .collect();
    let chatml_want: String = turns
        .iter()
        .map(|m| format!("<|im_start|>{}\n{}<|im_end|>\n", m.role, m.content))
        .collect();
    assert_eq!(render(&chatml(), &turns, false), chatml_want);
    assert_eq!(
        render(&qwen(), &turns, false),
        format!("{QWEN_DEFAULT_SYSTEM}{chatml_want}")
    );
    // One message of half the output limit.
    let big = [ChatMessage::user("x".repeat(MAX_OUTPUT_BYTES / 2))];
    assert_eq!(
        render(&chatml(), &big, false).len(),
        MAX_OUTPUT_BYTES / 2 + 28
    );
}

/// Renders `source` and expects an `Error::Template` containing `expected` within
/// [`HOSTILE_TIME_BOUND`].
fn assert_rejected(source: &str, expected: &str) {
    let t = ChatTemplate::new(source, "<s>", "</s>").expect("compiles");
    let start = Instant::now();
    let result = t.render(&[ChatMessage::user("hi")], true);
    let took = start.elapsed();
    match result {
        Err(Error::Template(msg)) => assert!(msg.contains(expected), "{source}: {msg}"),
        other => panic!("{source}: expected a template error, got {other:?}"),
    }
    assert!(took < HOSTILE_TIME_BOUND, "{source}: took {took:?}");
}

const WORK_LIMIT: &str = "work limit of";

#[test]
fn nested_loops_run_out_of_fuel() {
    assert_rejected(
        "{% for i in range(9999) %}{% for j in range(9999) %}{% for k in range(9999) %}\
         {% endfor %}{% endfor %}{% endfor %}",
        WORK_LIMIT,
    );
    // `range` itself is capped by minijinja.
    assert_rejected("{% for i in range(10**9) %}{% endfor %}", "range");
}

#[test]
fn deep_recursion_hits_the_recursion_limit() {
    let limit = format!("recursion limit of {MAX_RECURSION}");
    assert_rejected(
        "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
        &limit,
    );
    assert_rejected(
        "{% for x in [1] recursive %}{{ loop([x]) }}{% endfor %}",
        &limit,
    );
    // The template includes itself (it is stored as `chat`).
    assert_rejected("{% include 'chat' %}", &limit);
}

#[test]
fn huge_strings_are_refused_before_they_exist() {
    assert_rejected("{{ 'x' * 10**9 }}", WORK_LIMIT);
    assert_rejected("{{ ['x'] * 10**9 }}", "too large");
    // Doubling with `~`, `+`, `join` and `replace`.
    for grow in [
        "ns.s ~ ns.s",
        "ns.s + ns.s",
        "[ns.s, ns.s] | join('')",
        "ns.s.replace('x', 'xx')",
    ] {
        let source = format!(
            "{{% set ns = namespace(s='x') %}}{{% for i in range(64) %}}\
             {{% set ns.s = {grow} %}}{{% endfor %}}{{{{ ns.s | length }}}}"
        );
        assert_rejected(&source, WORK_LIMIT);
    }
}

#[test]
fn huge_output_stops_at_the_output_limit() {
    let limit = format!("limit of {MAX_OUTPUT_BYTES} bytes");
    // Many 1 KiB pieces: the output writer refuses the one past the limit.
    let piece = "x".repeat(1024);
    assert_rejected(
        &format!("{{% for i in range(9999) %}}{{% for j in range(9999) %}}{piece}{{% endfor %}}{{% endfor %}}"),
        &limit,
    );
    // Many one-byte pieces cost more fuel than bytes.
    assert_rejected(
        "{% for i in range(9999) %}{% for j in range(9999) %}{{ 'x' }}{% endfor %}{% endfor %}",
        WORK_LIMIT,
    );
    // One big piece.
    assert_rejected("{{ 'x' * (2**20 + 1) }}", &limit);
}

#[test]
fn formatting_filters_cannot_allocate_past_the_limits() {
    assert_rejected("{{ '{:>999999999}'.format('x') }}", "limit of");
    assert_rejected(
        "{{ '{:>99999999999999999999999}'.format('x') }}",
        "limit of",
    );
    assert_rejected(
        &format!("{{{{ '{}'.format('x' * 10000) }}}}", "{0}".repeat(1000)),
        "limit of",
    );
    assert_rejected("{{ '%999999999s' | format('x') }}", WORK_LIMIT);
    assert_rejected("{{ messages | tojson(indent=10**9) }}", "limit of");
    assert_rejected(
        "{% set ns = namespace(x=1) %}{% for i in range(1000) %}{% set ns.x = [ns.x] %}\
         {% endfor %}{{ ns.x | tojson }}",
        "nested deeper than",
    );
    // Small widths still work as in Python.
    let t = ChatTemplate::new("{{ '[{:>5}|{:<3}]'.format('ab', 'c') }}", "", "").unwrap();
    assert_eq!(t.render(&[], false).unwrap(), "[   ab|c  ]");
}
