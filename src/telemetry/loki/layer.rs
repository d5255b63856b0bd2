//! The tracing layer: each event becomes one JSON line — its fields, the fields of the spans it
//! is in, `pid`, and `_spans`, `_target`, `_module_path`, `_file`, `_line` — offered to the
//! queue. The level is the stream's label, not a field.

use std::fmt;
use std::time::SystemTime;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use super::queue::Inlet;
use super::{Line, SHIPPER_TARGET};

/// Targets never shipped: the shipper's own events and those of its HTTP client (shipping them
/// would make each push queue more lines to push).
const NOT_SHIPPED: [&str; 3] = [SHIPPER_TARGET, "reqwest", "hyper_util::client"];

/// Feeds the Loki queue; see the module docs.
pub(crate) struct LokiLayer {
    inlet: Inlet,
    pid: String,
}

/// The fields a span was created or recorded with.
#[derive(Default)]
struct SpanFields(Map<String, Value>);

impl LokiLayer {
    pub(super) fn new(inlet: Inlet) -> Self {
        LokiLayer {
            inlet,
            pid: std::process::id().to_string(),
        }
    }

    /// The JSON line of `event`.
    fn format<S>(&self, event: &Event<'_>, meta: &Metadata<'_>, ctx: &Context<'_, S>) -> String
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        let mut object = Map::new();
        let mut spans = Vec::new();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(fields) = span.extensions().get::<SpanFields>() {
                    object.extend(fields.0.clone());
                }
                spans.push(Value::from(span.name()));
            }
        }
        event.record(&mut JsonFields(&mut object));
        object.insert("pid".into(), self.pid.clone().into());
        object.insert("_spans".into(), Value::Array(spans));
        object.insert("_target".into(), meta.target().into());
        object.insert("_module_path".into(), meta.module_path().into());
        object.insert("_file".into(), meta.file().into());
        object.insert("_line".into(), meta.line().into());
        Value::Object(object).to_string()
    }
}

impl<S> tracing_subscriber::Layer<S> for LokiLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            let mut fields = SpanFields::default();
            attrs.record(&mut JsonFields(&mut fields.0));
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            if let Some(fields) = span.extensions_mut().get_mut::<SpanFields>() {
                values.record(&mut JsonFields(&mut fields.0));
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        // Events bridged from the `log` crate carry their real target and level this way.
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        if NOT_SHIPPED.iter().any(|t| meta.target().starts_with(t)) {
            return;
        }
        let text = self.format(event, meta, &ctx);
        self.inlet.offer(Line {
            level: *meta.level(),
            at: SystemTime::now(),
            text,
        });
    }
}

/// Records fields into a JSON object (the `log.*` fields of bridged events left out).
struct JsonFields<'a>(&'a mut Map<String, Value>);

impl JsonFields<'_> {
    fn put(&mut self, field: &Field, value: Value) {
        if !field.name().starts_with("log.") {
            self.0.insert(field.name().to_owned(), value);
        }
    }
}

impl Visit for JsonFields<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use prometheus::IntCounter;
    use tracing_subscriber::layer::SubscriberExt;

    use super::super::queue;
    use super::*;

    #[test]
    fn an_event_becomes_one_json_line_with_its_fields_span_fields_and_pid() {
        let dropped = IntCounter::new("d", "d").unwrap();
        let (inlet, mut outlet) = queue::bounded(10, dropped.clone());
        let subscriber = tracing_subscriber::registry().with(LokiLayer::new(inlet));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("retrain", retrain_id = "r-1");
            let _entered = span.enter();
            tracing::warn!(
                target: "refit::retrain",
                user_id = "kim",
                rows = 50u64,
                took = 1.5,
                ok = true,
                "pending actuals read"
            );
            // The shipper's own events stay off Loki.
            tracing::warn!(target: "refit::telemetry::loki", "push failed");
        });
        let line = outlet.try_recv().expect("one line");
        assert_eq!(line.level, tracing::Level::WARN);
        let json: Value = serde_json::from_str(&line.text).unwrap();
        assert_eq!(json["message"], "pending actuals read");
        assert_eq!(json["user_id"], "kim");
        assert_eq!(json["rows"], 50);
        assert_eq!(json["took"], 1.5);
        assert_eq!(json["ok"], true);
        assert_eq!(json["retrain_id"], "r-1");
        assert_eq!(json["_spans"], serde_json::json!(["retrain"]));
        assert_eq!(json["pid"], std::process::id().to_string());
        assert_eq!(json["_target"], "refit::retrain");
        assert!(outlet.try_recv().is_none(), "nothing else queued");
        assert_eq!(dropped.get(), 0);
    }
}
