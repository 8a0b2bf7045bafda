//! Prometheus metrics (prometheus-client), served at `/metrics`.
//!
//! Counters are plain atomics: incrementing one on the delivery path is a
//! single relaxed add, which is cheap enough to count every event.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Why a request was refused, as a metric label.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Reason {
    bad_request,
    body_too_large,
    body_timeout,
    unsupported_media_type,
    rate_limited,
    too_many_streams,
    too_many_long_polls,
    too_many_connections,
    too_many_reads,
    forbidden_origin,
    shutting_down,
    storage_unavailable,
    not_found,
    internal,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: Reason,
}

pub struct Metrics {
    pub messages_total: Counter,
    pub events_delivered_total: Counter,
    pub bytes_sent_total: Counter,
    pub sse_streams: Gauge,
    pub long_polls: Gauge,
    pub subscribers_dropped_total: Counter,
    pub accept_errors_total: Counter,
    pub requests_rejected_total: Family<ReasonLabel, Counter>,
    pub post_latency_seconds: Histogram,
    pub store_commit_seconds: Histogram,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        let messages_total = Counter::default();
        let events_delivered_total = Counter::default();
        let bytes_sent_total = Counter::default();
        let sse_streams = Gauge::default();
        let long_polls = Gauge::default();
        let subscribers_dropped_total = Counter::default();
        let accept_errors_total = Counter::default();
        let requests_rejected_total = Family::<ReasonLabel, Counter>::default();
        let post_latency_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        let store_commit_seconds = Histogram::new(exponential_buckets(0.00005, 2.0, 16));
        let mut registry = Registry::with_prefix("ssechat");
        registry.register(
            "messages",
            "Messages stored and broadcast",
            messages_total.clone(),
        );
        registry.register(
            "events_delivered",
            "Events (messages, join/leave) fanned out to open streams",
            events_delivered_total.clone(),
        );
        registry.register(
            "bytes_sent",
            "SSE bytes handed to connections",
            bytes_sent_total.clone(),
        );
        registry.register("sse_streams", "Open SSE streams", sse_streams.clone());
        registry.register("long_polls", "Long-polls waiting", long_polls.clone());
        registry.register(
            "subscribers_dropped",
            "SSE streams cut off for falling too far behind",
            subscribers_dropped_total.clone(),
        );
        registry.register(
            "accept_errors",
            "Connections the server failed to accept (e.g. out of file descriptors)",
            accept_errors_total.clone(),
        );
        registry.register(
            "requests_rejected",
            "Requests refused, by reason",
            requests_rejected_total.clone(),
        );
        registry.register(
            "post_latency_seconds",
            "Time from a POST's arrival to its answer",
            post_latency_seconds.clone(),
        );
        registry.register(
            "store_commit_seconds",
            "Time the writer spends storing one batch of messages (with its fsync)",
            store_commit_seconds.clone(),
        );
        Metrics {
            messages_total,
            events_delivered_total,
            bytes_sent_total,
            sse_streams,
            long_polls,
            subscribers_dropped_total,
            accept_errors_total,
            requests_rejected_total,
            post_latency_seconds,
            store_commit_seconds,
            registry,
        }
    }
}

/// One unit of a gauge, held: counted up when made, down when dropped,
/// however the holder ends (a long-poll whose client hung up is dropped
/// mid-wait, and must not stay counted).
pub struct Held(Gauge);

impl Held {
    pub fn new(gauge: &Gauge) -> Self {
        gauge.inc();
        Held(gauge.clone())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Metrics {
    pub fn rejected(&self, reason: Reason) {
        self.requests_rejected_total
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_spec_names() {
        let m = Metrics::default();
        m.messages_total.inc();
        m.rejected(Reason::rate_limited);
        let text = m.render();
        for name in [
            "ssechat_messages_total 1",
            "ssechat_events_delivered_total 0",
            "ssechat_sse_streams 0",
            "ssechat_long_polls 0",
            "ssechat_subscribers_dropped_total 0",
            "ssechat_requests_rejected_total{reason=\"rate_limited\"} 1",
        ] {
            assert!(text.contains(name), "missing {name:?} in\n{text}");
        }
    }
}
