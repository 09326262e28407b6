//! OpenTelemetry (the `otel` feature): a call's `tracing` span, exported as an OpenTelemetry
//! span named and attributed by the MCP semantic conventions, with the client's
//! `_meta.traceparent` as its parent. With `otlp`, the spans leave over OTLP/HTTP, set up by
//! the standard `OTEL_EXPORTER_OTLP_ENDPOINT` and `OTEL_TRACES_SAMPLER(_ARG)` variables.
//!
//! Forwarding stays byte-faithful: the gateway reads the client's trace context and never
//! writes one into what it forwards.

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Makes the client's span (a W3C `traceparent`) the parent of `span`.
pub fn set_parent(span: &tracing::Span, traceparent: &str) {
    let carrier =
        std::collections::HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    let parent = TraceContextPropagator::new().extract(&carrier);
    let _ = span.set_parent(parent);
}

/// The layer that turns `tracing` spans into OpenTelemetry spans of `provider`.
pub fn layer<S>(
    provider: &opentelemetry_sdk::trace::SdkTracerProvider,
) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use opentelemetry::trace::TracerProvider as _;
    tracing_opentelemetry::layer().with_tracer(provider.tracer("toolgate"))
}

/// The OTLP/HTTP exporter, when `OTEL_EXPORTER_OTLP_ENDPOINT` names a collector.
#[cfg(feature = "otlp")]
pub fn otlp_from_env() -> Option<Result<opentelemetry_sdk::trace::SdkTracerProvider, String>> {
    std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT")?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| format!("OTLP exporter: {e}"));
    Some(exporter.map(|exporter| {
        opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .build()
    }))
}

#[cfg(test)]
mod tests {
    use crate::clock::ManualClock;
    use crate::counters::MemoryCounterStore;
    use crate::policy::Policy;
    use crate::session::{ClientLine, Identity, Session};
    use opentelemetry::trace::{SpanId, SpanKind, TraceId};
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
    use std::sync::Arc;
    use tracing_subscriber::layer::SubscriberExt;

    /// The span a `tools/call` makes, exported: the semconv name and attributes, the client's
    /// trace and parent, and the decision.
    #[test]
    fn a_calls_span_has_the_semconv_names_and_the_clients_parent() {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = tracing_subscriber::registry().with(super::layer(&provider));
        let session = Session::new(
            Arc::new(
                Policy::from_json(
                    r#"{"version":"1","default":"allow","tools":{"nope":{"action":"deny"}}}"#,
                    "p.json",
                )
                .unwrap(),
            ),
            Arc::new(MemoryCounterStore::new(ManualClock::starting_at(0))),
            Identity {
                grant: "g".into(),
                session: "s-1".into(),
            },
        );
        let line = br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"nope","arguments":{},"_meta":{"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}}}"#;
        tracing::subscriber::with_default(subscriber, || {
            assert!(matches!(session.from_client(line), ClientLine::Answer(_)));
        });
        provider.force_flush().unwrap();
        let spans = exporter.get_finished_spans().unwrap();
        let span = spans
            .iter()
            .find(|s| s.name == "tools/call nope")
            .unwrap_or_else(|| panic!("{spans:#?}"));
        assert_eq!(
            span.span_context.trace_id(),
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap()
        );
        assert_eq!(
            span.parent_span_id,
            SpanId::from_hex("00f067aa0ba902b7").unwrap()
        );
        assert_eq!(span.span_kind, SpanKind::Server);
        let attribute = |key: &str| {
            span.attributes
                .iter()
                .find(|kv| kv.key.as_str() == key)
                .map(|kv| kv.value.to_string())
        };
        assert_eq!(attribute("mcp.method.name").as_deref(), Some("tools/call"));
        assert_eq!(attribute("gen_ai.tool.name").as_deref(), Some("nope"));
        assert_eq!(attribute("mcp.session.id").as_deref(), Some("s-1"));
        assert_eq!(attribute("jsonrpc.request.id").as_deref(), Some("7"));
        assert_eq!(attribute("toolgate.decision").as_deref(), Some("deny"));
        assert_eq!(attribute("toolgate.rule").as_deref(), Some("tools.nope"));
        assert_eq!(attribute("error.type").as_deref(), Some("deny"));
    }
}
