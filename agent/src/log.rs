//! [`ErrscopeLogger`]: a `log::Log` that captures `error!` records as events and keeps
//! `warn!`/`info!` records as breadcrumbs of the current domain, optionally passing every
//! record on to another logger (`env_logger`, say).
//!
//! An error record becomes an event with the formatted message, the target, module and
//! key-values in `contexts.log`, the record's source location in
//! `extra.capture_location`, and a storm fingerprint per call site. The `log` crate has no
//! spans; the current domain's tags and context go with the event as with any capture.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::assemble::Custom;
use crate::capture::truncate;
use crate::domain;
use crate::event::{Breadcrumb, Level as EventLevel};
use crate::integration;

/// The logger. Install it with [`ErrscopeLogger::install`] or `log::set_boxed_logger`.
///
/// ```
/// // Errors become events, warnings and info lines breadcrumbs; nothing is printed.
/// errscope::log::ErrscopeLogger::new().install().ok();
/// let domain = errscope::Domain::new("job: reindex");
/// domain.run_sync(|| {
///     log::info!(shard = 3; "reindexing");
///     log::error!(shard = 3; "index corrupt");
/// }).ok();
/// ```
pub struct ErrscopeLogger {
    inner: Option<Box<dyn log::Log>>,
    event_level: log::Level,
    breadcrumb_level: log::Level,
}

impl std::fmt::Debug for ErrscopeLogger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ErrscopeLogger")
            .field("inner", &self.inner.as_ref().map(|_| ".."))
            .field("event_level", &self.event_level)
            .field("breadcrumb_level", &self.breadcrumb_level)
            .finish()
    }
}

impl Default for ErrscopeLogger {
    fn default() -> Self {
        Self {
            inner: None,
            event_level: log::Level::Error,
            breadcrumb_level: log::Level::Info,
        }
    }
}

impl ErrscopeLogger {
    /// `error!` becomes an event, `warn!` and `info!` breadcrumbs; nothing else is done.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Passes every record on to `inner` as well (after errscope has seen it).
    #[must_use]
    pub fn wrap(mut self, inner: impl log::Log + 'static) -> Self {
        self.inner = Some(Box::new(inner));
        self
    }

    /// The least severe level captured as an event (default `Error`).
    #[must_use]
    pub fn event_level(mut self, level: log::Level) -> Self {
        self.event_level = level;
        self
    }

    /// The least severe level kept as a breadcrumb (default `Info`).
    #[must_use]
    pub fn breadcrumb_level(mut self, level: log::Level) -> Self {
        self.breadcrumb_level = level;
        self
    }

    /// Sets this as the global logger and raises `log::max_level` to let through what it
    /// (or the wrapped logger) uses. Fails if a logger is already set.
    pub fn install(self) -> Result<(), log::SetLoggerError> {
        let ours = self.breadcrumb_level.to_level_filter();
        let max = if self.inner.is_some() {
            log::LevelFilter::Trace
        } else {
            ours.max(self.event_level.to_level_filter())
        };
        log::set_boxed_logger(Box::new(self))?;
        log::set_max_level(max.max(log::max_level()));
        Ok(())
    }
}

fn level_of(level: log::Level) -> EventLevel {
    match level {
        log::Level::Error => EventLevel::Error,
        log::Level::Warn => EventLevel::Warning,
        log::Level::Info => EventLevel::Info,
        log::Level::Debug | log::Level::Trace => EventLevel::Debug,
    }
}

/// Collects a record's key-values as JSON.
struct Kvs(BTreeMap<String, Value>);

impl<'kvs> log::kv::VisitSource<'kvs> for Kvs {
    fn visit_pair(
        &mut self,
        key: log::kv::Key<'kvs>,
        value: log::kv::Value<'kvs>,
    ) -> Result<(), log::kv::Error> {
        let value = if let Some(v) = value.to_i64() {
            json!(v)
        } else if let Some(v) = value.to_u64() {
            json!(v)
        } else if let Some(v) = value.to_f64() {
            json!(v)
        } else if let Some(v) = value.to_bool() {
            json!(v)
        } else {
            json!(truncate(value.to_string()))
        };
        self.0.insert(key.as_str().to_owned(), value);
        Ok(())
    }
}

fn kvs_of(record: &log::Record<'_>) -> BTreeMap<String, Value> {
    let mut kvs = Kvs(BTreeMap::new());
    let _ = record.key_values().visit(&mut kvs);
    kvs.0
}

impl log::Log for ErrscopeLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= self.breadcrumb_level
            || self.inner.as_ref().is_some_and(|l| l.enabled(metadata))
    }

    fn log(&self, record: &log::Record<'_>) {
        let level = record.level();
        // `log::Level`s compare by verbosity: Error is the least.
        if level <= self.breadcrumb_level && !crate::worker::is_worker_thread() {
            if level <= self.event_level {
                capture(record);
            } else if let Some(domain) = domain::current() {
                let mut crumb = Breadcrumb::new(truncate(record.args().to_string()))
                    .category(record.target())
                    .level(level_of(level));
                crumb.data = kvs_of(record);
                domain.add_breadcrumb(crumb);
            }
        }
        if let Some(inner) = &self.inner {
            inner.log(record);
        }
    }

    fn flush(&self) {
        if let Some(inner) = &self.inner {
            inner.flush();
        }
    }
}

fn capture(record: &log::Record<'_>) {
    let location = match (record.file(), record.line()) {
        (Some(file), Some(line)) => Some(format!("{file}:{line}")),
        _ => None,
    };
    let fingerprint = integration::stable_hash((record.target(), record.file(), record.line()));
    integration::capture("log", fingerprint, level_of(record.level()), || Custom {
        message: Some(truncate(record.args().to_string())),
        mechanism: "log",
        location,
        contexts: BTreeMap::from([(
            "log".to_owned(),
            json!({
                "type": "log",
                "target": record.target(),
                "module": record.module_path(),
                "level": record.level().as_str(),
                "fields": kvs_of(record),
            }),
        )]),
        ..Custom::default()
    });
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use log::Log as _;

    struct Counting(Arc<AtomicUsize>);

    impl log::Log for Counting {
        fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
            metadata.level() <= log::Level::Debug
        }

        fn log(&self, _: &log::Record<'_>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }

        fn flush(&self) {}
    }

    #[test]
    fn a_wrapped_logger_sees_every_record_and_widens_enabled() {
        let seen = Arc::new(AtomicUsize::new(0));
        let logger = ErrscopeLogger::new().wrap(Counting(Arc::clone(&seen)));
        let debug = log::Metadata::builder().level(log::Level::Debug).build();
        let trace = log::Metadata::builder().level(log::Level::Trace).build();
        assert!(logger.enabled(&debug), "the wrapped logger wants debug");
        assert!(!logger.enabled(&trace));
        assert!(!ErrscopeLogger::new().enabled(&debug));
        for level in [log::Level::Error, log::Level::Info, log::Level::Debug] {
            logger.log(
                &log::Record::builder()
                    .level(level)
                    .args(format_args!("line"))
                    .build(),
            );
        }
        assert_eq!(seen.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn key_values_become_json() {
        let kvs: &[(&str, log::kv::Value<'_>)] = &[
            ("row", log::kv::Value::from(7u64)),
            ("ok", log::kv::Value::from(false)),
            ("file", log::kv::Value::from("a.csv")),
        ];
        let record = log::Record::builder()
            .args(format_args!("x"))
            .key_values(&kvs)
            .build();
        let got = kvs_of(&record);
        assert_eq!(got["row"], json!(7));
        assert_eq!(got["ok"], json!(false));
        assert_eq!(got["file"], json!("a.csv"));
    }
}
