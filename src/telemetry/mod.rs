//! Logs, metrics, traces and the admin endpoint. Logs are JSON lines by default
//! (`--log-format text` or `QUIC_INGRESS_LOG_FORMAT=text` for people), filtered with
//! `RUST_LOG`-style directives; traces go over OTLP when an endpoint is configured.

pub mod admin;
pub mod metrics;
pub mod traces;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Json,
    Text,
}

/// Installs the global subscriber: logs to stderr, plus the OTLP exporter when `traces`
/// is given (call inside the Tokio runtime then). `RUST_LOG` wins over `default_filter`.
pub fn init(
    format: LogFormat,
    default_filter: &str,
    traces: Option<&traces::TracingConfig>,
) -> Result<(), traces::TracingError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let otel = traces.map(traces::layer).transpose()?;
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    // Colour only for a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let _ = match format {
        LogFormat::Json => {
            registry.with(fmt.json().flatten_event(true).with_current_span(false).with_span_list(false)).try_init()
        }
        LogFormat::Text => registry.with(fmt).try_init(),
    };
    Ok(())
}
