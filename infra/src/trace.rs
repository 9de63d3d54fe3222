//! Traces across processes (docs/ARCHITECTURE.md, "Traces"): one trace per sampled command,
//! from the gateway's receipt of the frame through Kafka, the engine's batch and back.
//!
//! Export is over OTLP/HTTP and only when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set and `OTEL_SDK_DISABLED` is not `true`, following
//! the OpenTelemetry environment conventions: `OTEL_SERVICE_NAME` (default: the binary's name),
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` (`parentbased_traceidratio` by default;
//! also `traceidratio`, `always_on`, `always_off`, `parentbased_always_on`,
//! `parentbased_always_off`) and `OTEL_TRACES_SAMPLER_ARG` (the ratio, default
//! [`DEFAULT_RATIO`]). Without export nothing here allocates: [`start`] returns `None` after one
//! relaxed atomic load.
//!
//! The context travels as a W3C `traceparent` string (`00-<trace id>-<span id>-<flags>`) per
//! command line (`OrderRecord::tp`) and per answer (`EventRecord::tp`), since a Kafka record
//! packs many commands and a header per record could not say which command it belongs to.
//!
//! Logs: every process writes one `debug` line per traced command under the log target
//! `command` (`RUST_LOG=info,command=debug`), naming `trace_id`, `pair`, `account_id` and
//! `order_id` where they apply, so a log line leads to its trace and a trace to its lines.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, Tracer};

/// The default sampling ratio of commands that arrive without a sampled parent.
pub const DEFAULT_RATIO: f64 = 0.01;

static ENABLED: AtomicBool = AtomicBool::new(false);
static PROVIDER: OnceLock<(SdkTracerProvider, Tracer)> = OnceLock::new();

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("cannot build the OTLP span exporter: {0}")]
    Exporter(String),
    #[error("OTEL_TRACES_SAMPLER_ARG {0:?} is not a ratio between 0 and 1")]
    Ratio(String),
    #[error("OTEL_TRACES_SAMPLER {0:?} is not one this service supports")]
    Sampler(String),
}

/// Whether spans are exported (and so worth creating).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The sampler `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` name.
pub fn sampler_from(name: Option<&str>, arg: Option<&str>) -> Result<Sampler, TraceError> {
    let ratio = match arg {
        None => DEFAULT_RATIO,
        Some(a) => match a.trim().parse::<f64>() {
            Ok(r) if (0.0..=1.0).contains(&r) => r,
            _ => return Err(TraceError::Ratio(a.to_owned())),
        },
    };
    let parent_based = |root| Sampler::ParentBased(Box::new(root));
    Ok(match name.unwrap_or("parentbased_traceidratio") {
        "parentbased_traceidratio" => parent_based(Sampler::TraceIdRatioBased(ratio)),
        "traceidratio" => Sampler::TraceIdRatioBased(ratio),
        "always_on" => Sampler::AlwaysOn,
        "always_off" => Sampler::AlwaysOff,
        "parentbased_always_on" => parent_based(Sampler::AlwaysOn),
        "parentbased_always_off" => parent_based(Sampler::AlwaysOff),
        other => return Err(TraceError::Sampler(other.to_owned())),
    })
}

/// Installs the exporter when the environment asks for one; `Ok(false)` when it does not.
/// `service` is the default `service.name`.
pub fn init(service: &str) -> Result<bool, TraceError> {
    let wanted = env("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
        || env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some();
    let disabled = env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if !wanted || disabled || PROVIDER.get().is_some() {
        return Ok(enabled());
    }
    let sampler = sampler_from(
        env("OTEL_TRACES_SAMPLER").as_deref(),
        env("OTEL_TRACES_SAMPLER_ARG").as_deref(),
    )?;
    // The blocking HTTP client may not be built on a tokio thread (the services call this from
    // their async `main`); the batch processor exports from a thread of its own.
    let exporter = std::thread::spawn(|| {
        opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
            .map_err(|e| TraceError::Exporter(e.to_string()))
    })
    .join()
    .map_err(|_| TraceError::Exporter("the exporter's construction panicked".into()))??;
    // The builder reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; the binary's name only
    // when neither names the service.
    let mut resource = Resource::builder();
    if env("OTEL_SERVICE_NAME").is_none()
        && !env("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|a| a.contains("service.name="))
    {
        resource = resource.with_service_name(service.to_owned());
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(sampler)
        .with_resource(resource.build())
        .build();
    let tracer = provider.tracer("trading");
    if PROVIDER.set((provider, tracer)).is_ok() {
        ENABLED.store(true, Ordering::Relaxed);
    }
    Ok(true)
}

/// The exporting tracer, when export is on (for the `tracing` layer).
pub fn tracer() -> Option<Tracer> {
    PROVIDER.get().map(|(_, t)| t.clone())
}

/// Exports what is buffered and stops exporting (at a service's exit). Blocks until the
/// exporter is done: from async code, call it through `spawn_blocking`.
pub fn shutdown() {
    if let Some((provider, _)) = PROVIDER.get() {
        ENABLED.store(false, Ordering::Relaxed);
        if let Err(err) = provider.shutdown() {
            tracing::warn!(error = %err, "trace export did not finish at shutdown");
        }
    }
}

/// A W3C `traceparent` read into a remote parent; `None` if it is not one (a malformed value
/// from a client starts a new trace rather than failing its command).
pub fn parse_traceparent(tp: &str) -> Option<SpanContext> {
    let mut parts = tp.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2 || version == "ff" || trace.len() != 32 || span.len() != 16 {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let lower_hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !(lower_hex(version) && lower_hex(trace) && lower_hex(span) && lower_hex(flags)) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let cx = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags & 1),
        true,
        TraceState::default(),
    );
    cx.is_valid().then_some(cx)
}

/// The trace id of a `traceparent` (its second field), for logs; `None` when malformed.
pub fn trace_id_of(tp: &str) -> Option<&str> {
    tp.get(3..35)
        .filter(|_| tp.as_bytes().get(35) == Some(&b'-'))
}

/// A recorded (sampled) span of one command in this process.
pub struct CmdSpan {
    cx: Context,
}

impl std::fmt::Debug for CmdSpan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CmdSpan")
            .field("traceparent", &self.traceparent())
            .finish()
    }
}

/// Starts a span named `name` at `at`: the child of `parent` (a `traceparent`) when that is
/// valid, else a new trace for the sampler to decide. `None` when export is off or the span is
/// not sampled: the caller then carries no context on.
pub fn start(name: &'static str, parent: Option<&str>, at: SystemTime) -> Option<CmdSpan> {
    if !enabled() {
        return None;
    }
    let (_, tracer) = PROVIDER.get()?;
    let parent_cx = match parent.and_then(parse_traceparent) {
        Some(sc) => Context::new().with_remote_span_context(sc),
        None => Context::new(),
    };
    let span = tracer
        .span_builder(name)
        .with_kind(SpanKind::Internal)
        .with_start_time(at)
        .start_with_context(tracer, &parent_cx);
    if !span.span_context().is_sampled() {
        return None;
    }
    Some(CmdSpan {
        cx: parent_cx.with_span(span),
    })
}

impl CmdSpan {
    /// This span as the parent the next hop names.
    pub fn traceparent(&self) -> String {
        let sc = self.cx.span().span_context().clone();
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    }

    pub fn trace_id(&self) -> String {
        self.cx.span().span_context().trace_id().to_string()
    }

    pub fn set_attribute(&self, kv: KeyValue) {
        self.cx.span().set_attribute(kv);
    }

    /// A child span over `[from, to]`, already ended (a step whose times were measured).
    pub fn step(&self, name: &'static str, from: SystemTime, to: SystemTime) {
        let Some((_, tracer)) = PROVIDER.get() else {
            return;
        };
        let mut child = tracer
            .span_builder(name)
            .with_start_time(from)
            .start_with_context(tracer, &self.cx);
        child.end_with_timestamp(to);
    }

    /// Ends the span at `at`.
    pub fn end_at(self, at: SystemTime) {
        self.cx.span().end_with_timestamp(at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_parsing_takes_the_w3c_form_and_nothing_else() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let sc = parse_traceparent(tp).expect("valid");
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(sc.is_sampled() && sc.is_remote());
        let unsampled =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
        assert!(!unsampled.unwrap().is_sampled());
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e47-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn the_trace_id_is_the_second_field_of_a_traceparent() {
        assert_eq!(
            trace_id_of("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(trace_id_of("00-4bf92f35"), None);
        assert_eq!(trace_id_of(""), None);
    }

    #[test]
    fn the_sampler_follows_the_otel_variables() {
        assert!(matches!(
            sampler_from(None, None),
            Ok(Sampler::ParentBased(_))
        ));
        assert!(matches!(
            sampler_from(Some("traceidratio"), Some("0.5")),
            Ok(Sampler::TraceIdRatioBased(r)) if r == 0.5
        ));
        assert!(matches!(
            sampler_from(Some("always_on"), None),
            Ok(Sampler::AlwaysOn)
        ));
        assert!(matches!(
            sampler_from(None, Some("1.5")),
            Err(TraceError::Ratio(_))
        ));
        assert!(matches!(
            sampler_from(None, Some("x")),
            Err(TraceError::Ratio(_))
        ));
        assert!(matches!(
            sampler_from(Some("jaeger_remote"), None),
            Err(TraceError::Sampler(_))
        ));
    }

    #[test]
    fn without_export_nothing_is_started() {
        assert!(!enabled());
        assert!(
            start(
                "x",
                Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
                SystemTime::now()
            )
            .is_none()
        );
    }
}
