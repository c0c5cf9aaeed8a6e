//! Chat templates rendered against expected strings written out by hand from the templates'
//! text: Qwen 2.5's (copied from the real GGUF's `tokenizer.chat_template` into
//! `tests/data/qwen2.5_chat_template.jinja`) and a Zephyr-style one as TinyLlama-Chat uses.

use mlx_engine::chat_template::{ChatMessage, ChatTemplate};
use mlx_engine::Error;

const QWEN_DEFAULT_SYSTEM: &str = "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. \
                                   You are a helpful assistant.<|im_end|>\n";

/// The `<|user|>\n…</s>\n<|assistant|>\n` format.
const ZEPHYR: &str = "{% for message in messages %}
{% if message['role'] == 'user' %}
{{ '<|user|>\n' + message['content'] + eos_token }}
{% elif message['role'] == 'system' %}
{{ '<|system|>\n' + message['content'] + eos_token }}
{% elif message['role'] == 'assistant' %}
{{ '<|assistant|>\n'  + message['content'] + eos_token }}
{% endif %}
{% if loop.last and add_generation_prompt %}
{{ '<|assistant|>' }}
{% endif %}
{% endfor %}";

fn qwen() -> ChatTemplate {
    let source = include_str!("data/qwen2.5_chat_template.jinja");
    ChatTemplate::new(source, "<|endoftext|>", "<|im_end|>").expect("Qwen template compiles")
}

fn zephyr() -> ChatTemplate {
    ChatTemplate::new(ZEPHYR, "<s>", "</s>").expect("Zephyr template compiles")
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
