//! [`ErrscopeLayer`]: a `tracing_subscriber::Layer` that turns `error!` events into
//! captured events, `warn!`/`info!` events into breadcrumbs of the current domain, and
//! the fields of spans entered inside a domain into that domain's context.
//!
//! - An event at or above [`ErrscopeLayer::event_level`] (default `ERROR`) is captured:
//!   its message as the event's `message`, its fields and the span chain (root first,
//!   each span's name, target and fields) in `contexts.tracing`, its source location in
//!   `extra.capture_location`. An `error = &err as &dyn Error` field becomes the event's
//!   exception chain. Each call site has a storm fingerprint of its own.
//! - An event at or above [`ErrscopeLayer::breadcrumb_level`] (default `INFO`) and below
//!   the event level becomes a breadcrumb (category: the target; data: the fields) of the
//!   current domain. Outside a domain it is dropped, and nothing is formatted.
//! - A span entered inside a domain adds its fields to the domain's context, under
//!   `spans.<span name>`; later captures in the domain carry them.

use std::collections::BTreeMap;
use std::error::Error;
use std::fmt::{self, Write as _};
use std::sync::Arc;

use serde_json::{Value, json};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use crate::assemble::Custom;
use crate::capture::{Link, truncate, truncate_in_place, walk_chain};
use crate::domain::{self, Crumb, CrumbData, Domain};
use crate::event::Level as EventLevel;
use crate::integration;

/// The layer; add it to a `tracing_subscriber::Registry`.
///
/// ```
/// use tracing_subscriber::prelude::*;
///
/// let subscriber = tracing_subscriber::registry().with(errscope::tracing::ErrscopeLayer::new());
/// tracing::subscriber::with_default(subscriber, || {
///     let domain = errscope::Domain::new("job: reindex");
///     domain.run_sync(|| {
///         tracing::info!(shard = 3, "reindexing");        // a breadcrumb of the domain
///         tracing::error!(shard = 3, "index corrupt");    // a captured event
///     })
/// }).ok();
/// ```
#[derive(Clone, Debug)]
pub struct ErrscopeLayer {
    event_level: Level,
    breadcrumb_level: Level,
}

impl Default for ErrscopeLayer {
    fn default() -> Self {
        Self {
            event_level: Level::ERROR,
            breadcrumb_level: Level::INFO,
        }
    }
}

impl ErrscopeLayer {
    /// `error!` becomes an event, `warn!` and `info!` breadcrumbs.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The least severe level captured as an event (default `ERROR`).
    #[must_use]
    pub fn event_level(mut self, level: Level) -> Self {
        self.event_level = level;
        self
    }

    /// The least severe level kept as a breadcrumb (default `INFO`).
    #[must_use]
    pub fn breadcrumb_level(mut self, level: Level) -> Self {
        self.breadcrumb_level = level;
        self
    }
}

/// A span's fields, kept in the registry's span extensions and shared with the domains
/// the span is entered in.
struct SpanFields {
    fields: Arc<BTreeMap<String, Value>>,
    /// The domain the fields were last added to (and whether they changed since).
    added_to: Option<Domain>,
}

/// Collects fields as JSON; the `message` field and an `error` field apart.
#[derive(Default)]
struct Fields {
    message: Option<String>,
    fields: BTreeMap<String, Value>,
    error: Option<Vec<Link>>,
}

impl Visit for Fields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.fields.insert(field.name().to_owned(), json!(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.fields.insert(field.name().to_owned(), json!(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.fields.insert(field.name().to_owned(), json!(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.fields.insert(field.name().to_owned(), json!(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = Some(truncate(value.to_owned()));
        } else {
            self.fields
                .insert(field.name().to_owned(), json!(truncate(value.to_owned())));
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn Error + 'static)) {
        if self.error.is_none() {
            self.error = Some(walk_chain(value, "dyn Error"));
        }
        self.fields
            .insert(field.name().to_owned(), json!(truncate(value.to_string())));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = truncate(format!("{value:?}"));
        if field.name() == "message" {
            self.message = Some(text);
        } else {
            self.fields.insert(field.name().to_owned(), json!(text));
        }
    }
}

/// A breadcrumb's fields: names as the callsite has them, no map; written into the
/// buffers [`domain::crumb_buffers`] hands out (those of a crumb that left the ring).
struct CrumbFields {
    message: String,
    fields: CrumbData,
}

impl CrumbFields {
    fn push(&mut self, field: &Field, value: Value) {
        self.fields.push((field.name(), value));
    }
}

impl Visit for CrumbFields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.push(field, Value::from(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.push(field, Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.push(field, Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.push(field, Value::from(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.clear();
            self.message.push_str(value);
            truncate_in_place(&mut self.message);
        } else {
            self.push(field, Value::String(truncate(value.to_owned())));
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn Error + 'static)) {
        let value = Value::String(truncate(value.to_string()));
        self.push(field, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.message.clear();
            let _ = write!(self.message, "{value:?}");
            truncate_in_place(&mut self.message);
        } else {
            let text = truncate(format!("{value:?}"));
            self.push(field, Value::String(text));
        }
    }
}

fn level_of(level: Level) -> EventLevel {
    match level {
        Level::ERROR => EventLevel::Error,
        Level::WARN => EventLevel::Warning,
        Level::INFO => EventLevel::Info,
        _ => EventLevel::Debug,
    }
}

impl<S> tracing_subscriber::Layer<S> for ErrscopeLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let Some(message) = fields.message {
            fields.fields.insert("message".to_owned(), json!(message));
        }
        span.extensions_mut().insert(SpanFields {
            fields: Arc::new(fields.fields),
            added_to: None,
        });
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut fields = Fields::default();
        values.record(&mut fields);
        let mut ext = span.extensions_mut();
        if let Some(known) = ext.get_mut::<SpanFields>() {
            // Copied here if a domain holds the old fields (its snapshot stays as it was).
            Arc::make_mut(&mut known.fields).extend(fields.fields);
            known.added_to = None;
        }
    }

    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        // Entered on every poll of an instrumented future: only the first entry inside a
        // domain (or after a change of the fields) touches the domain.
        let Some(domain) = domain::current() else {
            return;
        };
        let Some(span) = ctx.span(id) else { return };
        let mut ext = span.extensions_mut();
        let Some(known) = ext.get_mut::<SpanFields>() else {
            return;
        };
        if known.added_to.as_ref().is_some_and(|d| d.ptr_eq(&domain)) {
            return;
        }
        // The domain shares the fields: no copy, no JSON built until an event needs it.
        domain.add_span(span.name(), Arc::clone(&known.fields));
        known.added_to = Some(domain);
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        let level = *meta.level();
        // `Level`s compare by verbosity: ERROR is the least.
        if level > self.breadcrumb_level || crate::worker::is_worker_thread() {
            return;
        }
        if level > self.event_level {
            if !domain::is_current() {
                return;
            }
            // Kept as it came (target and field names are `&'static`): the breadcrumb
            // JSON is made only if an event of the domain carries it. The fields are
            // visited (the host's `Debug` code) before the domain is borrowed.
            let (message, fields) = domain::crumb_buffers();
            let mut fields = CrumbFields { message, fields };
            event.record(&mut fields);
            let crumb = Crumb::traced(
                fields.message,
                level_of(level),
                meta.target(),
                fields.fields,
            );
            domain::with_current(|domain| domain.add_crumb(crumb));
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let spans: Vec<Value> = ctx
            .event_scope(event)
            .map(|scope| {
                scope
                    .from_root()
                    .map(|span| {
                        let ext = span.extensions();
                        let fields = ext.get::<SpanFields>().map(|f| &*f.fields);
                        json!({
                            "name": span.name(),
                            "target": span.metadata().target(),
                            "fields": fields,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let location = match (meta.file(), meta.line()) {
            (Some(file), Some(line)) => Some(format!("{file}:{line}")),
            _ => None,
        };
        let fingerprint = integration::stable_hash((meta.target(), meta.file(), meta.line()));
        integration::capture("tracing", fingerprint, level_of(level), || {
            let message = fields.message.unwrap_or_else(|| meta.name().to_owned());
            Custom {
                chain: fields.error.unwrap_or_default(),
                message: Some(message),
                mechanism: "tracing",
                location,
                contexts: BTreeMap::from([(
                    "tracing".to_owned(),
                    json!({
                        "type": "tracing",
                        "target": meta.target(),
                        "level": meta.level().as_str(),
                        "fields": fields.fields,
                        "spans": spans,
                    }),
                )]),
                ..Custom::default()
            }
        });
    }
}
