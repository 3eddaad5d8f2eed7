//! OpenTelemetry traces over OTLP/HTTP: the tracing layer that exports spans, W3C
//! `traceparent` extraction from clients and injection toward backends. Off unless an
//! endpoint is configured; when off, request spans are not created at all.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Where and how much to export.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// OTLP/HTTP base URL, like `http://127.0.0.1:4318`; spans go to `/v1/traces`.
    pub endpoint: String,
    /// Share of new traces sampled (0.0 to 1.0); a client's sampled flag is honoured.
    #[serde(default = "one")]
    pub sampling_ratio: f64,
}

fn one() -> f64 {
    1.0
}

/// Why the exporter could not start.
#[derive(Debug, thiserror::Error)]
#[error("OTLP exporter: {0}")]
pub struct TracingError(String);

static ENABLED: AtomicBool = AtomicBool::new(false);
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Whether spans are being exported (request spans are skipped otherwise).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// An info-level request span when traces are exported, `Span::none()` otherwise, so a
/// request without an exporter pays for no span at all. Takes `tracing::info_span!`'s
/// arguments.
macro_rules! span {
    ($($args:tt)*) => {
        if $crate::telemetry::traces::enabled() {
            ::tracing::info_span!($($args)*)
        } else {
            ::tracing::Span::none()
        }
    };
}
pub(crate) use span;

/// Builds the exporting layer. Must run inside the Tokio runtime (the batch exporter is a
/// task on it).
pub fn layer<S>(config: &TracingConfig) -> Result<impl tracing_subscriber::Layer<S>, TracingError>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use opentelemetry_otlp::WithExportConfig;
    let endpoint = format!("{}/v1/traces", config.endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(endpoint)
        .with_timeout(std::time::Duration::from_secs(5))
        .build()
        .map_err(|e| TracingError(e.to_string()))?;
    let processor = opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
        exporter,
        opentelemetry_sdk::runtime::Tokio,
    )
    .build();
    let ratio = config.sampling_ratio.clamp(0.0, 1.0);
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio))))
        .with_resource(opentelemetry_sdk::Resource::builder().with_service_name("quic-ingress").build())
        .build();
    let tracer = provider.tracer("quic-ingress");
    let _ = PROVIDER.set(provider);
    ENABLED.store(true, Ordering::Relaxed);
    Ok(tracing_opentelemetry::layer().with_tracer(tracer))
}

/// Flushes and stops the exporter (at exit, so the last spans are not lost).
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get()
        && let Err(e) = provider.shutdown()
    {
        eprintln!("warning: flushing traces: {e}");
    }
}

/// Continues the client's trace when the request carries `traceparent`.
pub fn set_remote_parent(span: &tracing::Span, headers: &http::HeaderMap) {
    if !enabled() || !headers.contains_key("traceparent") {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    let _ = span.set_parent(cx);
}

/// Writes the current span's context as `traceparent` (and `tracestate`) for the backend.
pub fn inject(span: &tracing::Span, headers: &mut http::HeaderMap) {
    if !enabled() {
        return;
    }
    TraceContextPropagator::new().inject_context(&span.context(), &mut HeaderInjector(headers));
}
