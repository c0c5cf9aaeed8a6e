//! The server's Prometheus metrics (`GET /metrics`, OpenMetrics text): requests by endpoint
//! and status, tokens read and generated, queue depth, busy sequences, latency histograms and
//! the prefix cache. Shared by the HTTP side and the engine thread (every metric is atomic).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// The labels of a finished HTTP request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route (`/v1/chat/completions`…), or `unmatched`.
    pub endpoint: String,
    /// The HTTP status code.
    pub status: u16,
}

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    /// HTTP requests answered, by endpoint and status (a stream counts when its head is sent).
    pub requests: Family<RequestLabels, Counter>,
    /// Prompt tokens of the requests the engine admitted.
    pub prompt_tokens: Counter,
    /// Prompt positions run through the model (prompt tokens less those from the prefix cache).
    pub prefill_tokens: Counter,
    /// Tokens generated.
    pub generated_tokens: Counter,
    /// Requests waiting for a sequence.
    pub queue_depth: Gauge,
    /// Sequences being prefilled or decoded.
    pub busy_sequences: Gauge,
    /// Seconds from a request's arrival to its first generated token.
    pub time_to_first_token: Histogram,
    /// Seconds between consecutive tokens of one sequence.
    pub inter_token_latency: Histogram,
    /// Sequences per batched decode step.
    pub decode_batch_size: Histogram,
    /// Positions reused from the prefix cache, per request that hit it.
    pub prefix_cache_hit_tokens: Histogram,
    /// Requests that found no cached prefix.
    pub prefix_cache_misses: Counter,
    /// Bytes of KV the prefix cache holds.
    pub prefix_cache_bytes: Gauge,
    /// Sequences the prefix cache holds.
    pub prefix_cache_entries: Gauge,
    /// Entries evicted to stay under `--prefix-cache-bytes`.
    pub prefix_cache_evictions: Counter,
    /// Tokens proposed by speculative drafts.
    pub drafted_tokens: Counter,
    /// Drafted tokens the target model accepted.
    pub accepted_tokens: Counter,
}

impl Metrics {
    /// Every metric at zero, registered under the `mlx_engine_` prefix.
    pub fn new() -> Metrics {
        let metrics = Metrics {
            registry: Registry::with_prefix("mlx_engine"),
            requests: Family::default(),
            prompt_tokens: Counter::default(),
            prefill_tokens: Counter::default(),
            generated_tokens: Counter::default(),
            queue_depth: Gauge::default(),
            busy_sequences: Gauge::default(),
            // 5 ms .. 41 s
            time_to_first_token: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            // 1 ms .. 8 s
            inter_token_latency: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            // 1 .. 256
            decode_batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 9)),
            // 16 .. 32768 positions
            prefix_cache_hit_tokens: Histogram::new(exponential_buckets(16.0, 2.0, 12)),
            prefix_cache_misses: Counter::default(),
            prefix_cache_bytes: Gauge::default(),
            prefix_cache_entries: Gauge::default(),
            prefix_cache_evictions: Counter::default(),
            drafted_tokens: Counter::default(),
            accepted_tokens: Counter::default(),
        };
        metrics.register()
    }

    /// Registers every metric (the registry holds shared handles to them).
    fn register(mut self) -> Metrics {
        let r = &mut self.registry;
        r.register("requests", "HTTP requests answered", self.requests.clone());
        r.register(
            "prompt_tokens",
            "Prompt tokens of admitted requests",
            self.prompt_tokens.clone(),
        );
        r.register(
            "prefill_tokens",
            "Prompt positions computed (not taken from the prefix cache)",
            self.prefill_tokens.clone(),
        );
        r.register(
            "generated_tokens",
            "Tokens generated",
            self.generated_tokens.clone(),
        );
        r.register(
            "queue_depth",
            "Requests waiting for a sequence",
            self.queue_depth.clone(),
        );
        r.register(
            "busy_sequences",
            "Sequences being prefilled or decoded",
            self.busy_sequences.clone(),
        );
        r.register_with_unit(
            "time_to_first_token",
            "Time from a request's arrival to its first token",
            Unit::Seconds,
            self.time_to_first_token.clone(),
        );
        r.register_with_unit(
            "inter_token_latency",
            "Time between consecutive tokens of a sequence",
            Unit::Seconds,
            self.inter_token_latency.clone(),
        );
        r.register(
            "decode_batch_size",
            "Sequences per batched decode step",
            self.decode_batch_size.clone(),
        );
        r.register(
            "prefix_cache_hit_tokens",
            "Positions reused from the prefix cache per request that hit it",
            self.prefix_cache_hit_tokens.clone(),
        );
        r.register(
            "prefix_cache_misses",
            "Requests that found no cached prefix",
            self.prefix_cache_misses.clone(),
        );
        r.register_with_unit(
            "prefix_cache",
            "KV bytes held by the prefix cache",
            Unit::Bytes,
            self.prefix_cache_bytes.clone(),
        );
        r.register(
            "prefix_cache_entries",
            "Sequences held by the prefix cache",
            self.prefix_cache_entries.clone(),
        );
        r.register(
            "prefix_cache_evictions",
            "Prefix cache entries evicted to stay under its byte bound",
            self.prefix_cache_evictions.clone(),
        );
        r.register(
            "drafted_tokens",
            "Tokens proposed by speculative drafts",
            self.drafted_tokens.clone(),
        );
        r.register(
            "accepted_tokens",
            "Drafted tokens the model accepted",
            self.accepted_tokens.clone(),
        );
        self
    }

    /// The OpenMetrics text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// Counts one answered HTTP request.
    pub fn count_request(&self, endpoint: &str, status: u16) {
        let labels = RequestLabels {
            endpoint: endpoint.to_string(),
            status,
        };
        self.requests.get_or_create(&labels).inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// The content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_every_metric_with_its_type() {
        let metrics = Metrics::new();
        metrics.count_request("/v1/completions", 200);
        metrics.generated_tokens.inc_by(3);
        metrics.time_to_first_token.observe(0.02);
        let text = metrics.encode();
        for line in [
            "# TYPE mlx_engine_requests counter",
            "mlx_engine_requests_total{endpoint=\"/v1/completions\",status=\"200\"} 1",
            "mlx_engine_generated_tokens_total 3",
            "# TYPE mlx_engine_time_to_first_token_seconds histogram",
            "mlx_engine_time_to_first_token_seconds_count 1",
            "mlx_engine_prefix_cache_bytes 0",
            "mlx_engine_drafted_tokens_total 0",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }
}
