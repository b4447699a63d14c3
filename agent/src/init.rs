//! Starting and stopping the agent: [`init`] builds the shared state, starts the agent's
//! threads and installs the panic hook; dropping the [`Guard`] flushes and stops them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client::{self, Client};
use crate::options::Options;
use crate::scrub::Scrubber;
use crate::shared::{Counters, Shared};
use crate::storm::Storm;
use crate::trace::{InApp, RawTrace};
use crate::{warn, worker};

/// Starts the agent: installs the panic hook and the fatal-signal handlers (once per
/// process) and starts the agent's thread, which opens the outbox. Cheap: no symbols are
/// loaded; the one file the calling thread writes is the small run file of the handlers.
///
/// A second call while a [`Guard`] is alive warns on stderr and returns an inert guard;
/// the first configuration stays in force. After the first guard is dropped, `init` may
/// be called again.
pub fn init(options: Options) -> Guard {
    // A few microseconds: addresses only, resolved later on the agent's thread, where
    // the `<crate>::main` that std started names the host crate.
    let init_trace = RawTrace::capture();
    let started = client::install_with(|| {
        let server_name = options.server_name.clone().or_else(|| {
            hostname::get()
                .ok()
                .map(|h| h.to_string_lossy().into_owned())
        });
        let shared = Arc::new(Shared {
            in_app: InApp::new(&options.in_app_include, &options.in_app_exclude),
            storm: Storm::new(options.storm_burst, options.storm_window),
            counters: Counters::default(),
            server_name,
            scrubber: Scrubber::new(&options.scrub_keys),
            init_trace,
            run_id: crate::event::EventId::new().to_string(),
            options,
        });
        let tx = worker::start(Arc::clone(&shared))?;
        // The shipper reads what the writer commits; without a DSN events just stay.
        let shipper = shared
            .options
            .dsn
            .as_ref()
            .and_then(|dsn| crate::ship::start(Arc::clone(&shared), dsn));
        Some(Arc::new(Client::new(shared, tx, shipper)))
    });
    match started {
        Err(()) => {
            warn(format_args!(
                "init called while already initialized; keeping the first configuration"
            ));
            Guard { client: None }
        }
        Ok(None) => Guard { client: None },
        Ok(Some(client)) => {
            crate::hook::install();
            crate::crash_report::install(&client.shared);
            Guard {
                client: Some(client),
            }
        }
    }
}

/// Keeps the agent running; dropping it flushes pending events (waiting at most
/// [`Options::shutdown_timeout`]) and stops the agent's thread.
#[must_use = "dropping the guard stops errscope; keep it alive for the whole program"]
#[derive(Debug)]
pub struct Guard {
    client: Option<Arc<Client>>,
}

impl Guard {
    /// Waits until every event captured before this call is committed, with storm counts
    /// swept, and, with a DSN, until the outbox is empty (everything delivered, or refused
    /// and reported), or until `timeout` passes. Returns whether all of it happened; what
    /// is not delivered stays in the outbox for later (or the next start).
    /// An inert guard (from a second `init`) flushes the running agent.
    pub fn flush(&self, timeout: Duration) -> bool {
        match &self.client {
            Some(client) => client.flush(timeout),
            None => client::flush(timeout),
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        let timeout = client.shared.options.shutdown_timeout;
        let deadline = Instant::now() + timeout;
        // Dropped while unwinding from a panic: the process is going down with it.
        let status = if std::thread::panicking() {
            "crashed"
        } else {
            "exited"
        };
        client.end_session(status, deadline);
        client.flush(deadline.saturating_duration_since(Instant::now()));
        client::uninstall(&client);
        client.shut_down(deadline);
    }
}
