//! The forward pass's `tracing` spans: one per step of each block, named as llama.cpp names
//! its intermediates, with the layer index as `il`. Its own test binary, so that no other
//! test's thread touches the spans' callsites while the subscriber is installed.

mod common;

use mlx_engine::engine::{Engine, LoadOptions};

/// A span's name and its `il` field.
type SpanName = (String, Option<u64>);

/// Names and `il` fields of the spans opened while a subscriber listens.
#[derive(Clone, Default)]
struct SpanLog(std::sync::Arc<std::sync::Mutex<Vec<SpanName>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for SpanLog {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _id: &tracing::span::Id,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        struct Il(Option<u64>);
        impl tracing::field::Visit for Il {
            fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
                if field.name() == "il" {
                    self.0 = Some(value);
                }
            }
            fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
        }
        let mut il = Il(None);
        attrs.record(&mut il);
        let name = attrs.metadata().name().to_string();
        self.0.lock().unwrap().push((name, il.0));
    }
}

/// Each step of each block has a trace span named as llama.cpp names its intermediate, with
/// the layer index as `il`.
#[test]
fn forward_steps_have_trace_spans_with_the_layer_index() {
    if common::skip_requested() {
        return;
    }
    use tracing_subscriber::layer::SubscriberExt;
    let log = SpanLog::default();
    let subscriber = tracing_subscriber::registry().with(log.clone());
    let model = common::synthetic(
        "qwen2-mix",
        &["--arch", "qwen2", "--quant", "mix", "--seed", "2"],
    );
    let engine = Engine::load(&model, &LoadOptions::default()).unwrap();
    tracing::subscriber::with_default(subscriber, || engine.logits_all(&[1, 300]).unwrap());
    let spans = log.0.lock().unwrap().clone();
    for il in 0..engine.config().n_layers as u64 {
        for step in [
            "block",
            "attn_norm",
            "kqv_out",
            "ffn_inp",
            "ffn_norm",
            "l_out",
        ] {
            assert!(
                spans.contains(&(step.to_string(), Some(il))),
                "no span {step} il={il} in {spans:?}"
            );
        }
    }
    for global in ["inp_embd", "result_norm", "result_output"] {
        assert!(spans.contains(&(global.to_string(), None)), "{global}");
    }
}
