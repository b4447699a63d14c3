//! The panic hook: records the panic with its stack and domain, waits (bounded) until the
//! record is committed, then calls the hook that was installed before.

use std::cell::Cell;
use std::panic::{self, PanicHookInfo};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::{client, domain, warn, worker};

static INSTALLED: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// Set while this thread runs the hook: a panic inside it is not recorded again.
    static IN_HOOK: Cell<bool> = const { Cell::new(false) };
}

/// Installs the hook once per process; the previous hook keeps being called after ours.
pub(crate) fn install() {
    // `set_hook` panics on a panicking thread: then try again at the next `init`.
    if std::thread::panicking()
        || INSTALLED
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
    {
        return;
    }
    let previous = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        record(info);
        previous(info);
    }));
}

/// Resets the re-entrancy flag however `record` ends.
struct Reentry;

impl Drop for Reentry {
    fn drop(&mut self) {
        let _ = IN_HOOK.try_with(|f| f.set(false));
    }
}

fn record(info: &PanicHookInfo<'_>) {
    // A thread being torn down has no thread-locals: treat it as re-entered.
    if IN_HOOK.try_with(|f| f.replace(true)).unwrap_or(true) {
        return;
    }
    let _reentry = Reentry;
    if worker::is_worker_thread() {
        // A panic in the agent's own thread (a bug, or a `before_send` hook): the agent
        // catches it and goes on; the record is written directly, without waiting.
        warn(format_args!("panic on the agent's thread: {info}"));
    }
    let Some(client) = client::current() else {
        return;
    };
    let message = crate::capture::truncate(domain::panic_message(info.payload()));
    let location = info
        .location()
        .map(|l| (l.file().to_owned(), l.line(), l.column()));
    if let Some(id) = client.capture_panic(message, location) {
        domain::set_last_panic(id);
    }
}
