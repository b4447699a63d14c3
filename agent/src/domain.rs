//! Domains: a named scope (a request, a job) with tags, context and breadcrumbs that every
//! capture inside it picks up, and that turns a panic inside it into an error value.
//!
//! The current domain lives in a thread-local that [`Domain::run_sync`] sets for the
//! duration of a call and that the futures of [`Domain::run`] and
//! [`DomainExt::in_current_domain`] set for the duration of each `poll` (the way
//! `tracing`'s `Instrumented` enters a span). This works on any executor, follows a task
//! across the worker threads of a multi-threaded runtime, and always makes the innermost
//! domain the current one. Beside it, a plain pointer to the domain's [`Mark`] (its id and
//! name, fixed at creation) is what the fatal-signal handler reads (`signal_safe_current`).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering, compiler_fence};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use serde::Serialize;
use serde_json::Value;

use crate::event::{Breadcrumb, EventId, Level};

/// Breadcrumbs kept per domain; older ones are dropped.
const MAX_BREADCRUMBS: usize = 100;

/// The id the next domain gets (ids count from 1 in each process).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static CURRENT: RefCell<Option<Domain>> = const { RefCell::new(None) };
    /// The [`Mark`] of the domain in `CURRENT`, or null: set after a domain is made current
    /// and put back before it stops being current, so it never points at a freed `Mark`.
    /// Const-initialized and without destructor: reading it in a signal handler is a plain
    /// load from thread-local storage (no lazy set-up, no destructor registration).
    static MARK: Cell<*const Mark> = const { Cell::new(std::ptr::null()) };
    /// The id of the last panic the hook recorded on this thread, for `DomainPanic`.
    static LAST_PANIC: std::cell::Cell<Option<EventId>> = const { std::cell::Cell::new(None) };
}

/// The data of a domain at one moment; captures take a cheap snapshot (an `Arc` clone).
#[derive(Clone, Debug, Default)]
pub(crate) struct DomainData {
    /// The name given to [`Domain::new`]; empty when the [`Lazy`] source names the domain.
    pub(crate) name: Arc<str>,
    pub(crate) tags: BTreeMap<String, String>,
    pub(crate) context: BTreeMap<String, Value>,
    pub(crate) breadcrumbs: VecDeque<Crumb>,
    /// The fields of `tracing` spans entered inside the domain, by span name: shared with
    /// the span (copied on write), under the context's `spans` in events.
    pub(crate) spans: BTreeMap<&'static str, Arc<BTreeMap<String, Value>>>,
    /// Tags and context made only when an event needs them, and the watcher of the
    /// domain's spawned tasks (the tower layer's request).
    pub(crate) lazy: Option<Lazy>,
}

/// A breadcrumb as a domain keeps it: one given whole, or one the `tracing` layer made,
/// kept as it came (its target and field names are `&'static`) and made a [`Breadcrumb`]
/// when an event is assembled.
#[derive(Clone, Debug)]
pub(crate) struct Crumb {
    pub(crate) message: Option<String>,
    kind: CrumbKind,
}

#[derive(Clone, Debug)]
enum CrumbKind {
    /// Its message is in [`Crumb::message`]. Boxed: a ring of small crumbs moves less.
    Given(Box<Breadcrumb>),
    #[cfg_attr(not(feature = "tracing"), allow(dead_code))]
    Traced {
        timestamp: crate::time::Stamp,
        level: Level,
        target: &'static str,
        fields: CrumbData,
    },
}

/// A `tracing` breadcrumb's fields, by the callsite's field names.
pub(crate) type CrumbData = Vec<(&'static str, Value)>;

/// The largest buffers kept for reuse (see [`crumb_buffers`]): a message that needed
/// more (up to [`crate::capture::MAX_MESSAGE`]) gives its buffer back to the allocator.
const SPARE_MESSAGE: usize = 1024;
const SPARE_FIELDS: usize = 16;

thread_local! {
    /// The message and field buffers of the last breadcrumb this thread pushed out of a
    /// full ring, emptied: the next `tracing` breadcrumb of the thread writes into them,
    /// so a domain that keeps logging allocates and frees nothing per breadcrumb.
    static SPARE: Cell<Option<(String, CrumbData)>> = const { Cell::new(None) };
}

/// Empty buffers for a breadcrumb's message and fields: the spare ones of this thread
/// when it has them (see [`SPARE`]), else new ones (no allocation until written).
#[cfg_attr(not(feature = "tracing"), allow(dead_code))]
pub(crate) fn crumb_buffers() -> (String, CrumbData) {
    SPARE
        .try_with(Cell::take)
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// Keeps the buffers of a crumb that left a ring as this thread's spare ones.
fn recycle(crumb: Crumb) {
    let (Some(mut message), CrumbKind::Traced { mut fields, .. }) = (crumb.message, crumb.kind)
    else {
        return;
    };
    if message.capacity() > SPARE_MESSAGE || fields.capacity() > SPARE_FIELDS {
        return;
    }
    message.clear();
    // Drops the values (a string field's own buffer is not kept).
    fields.clear();
    let _ = SPARE.try_with(|s| s.set(Some((message, fields))));
}

impl Crumb {
    /// A `tracing` event's breadcrumb, stamped now.
    #[cfg_attr(not(feature = "tracing"), allow(dead_code))]
    pub(crate) fn traced(
        message: String,
        level: Level,
        target: &'static str,
        fields: CrumbData,
    ) -> Self {
        Self {
            message: Some(message),
            kind: CrumbKind::Traced {
                timestamp: crate::time::Stamp::now(),
                level,
                target,
                fields,
            },
        }
    }

    /// The breadcrumb an event carries; `now` turns its moment into wall-clock time.
    pub(crate) fn to_breadcrumb(&self, now: &crate::time::Now) -> Breadcrumb {
        let mut crumb = match &self.kind {
            CrumbKind::Given(crumb) => Breadcrumb::clone(crumb),
            CrumbKind::Traced {
                timestamp,
                level,
                target,
                fields,
            } => {
                let mut crumb = Breadcrumb::new(String::new())
                    .category(*target)
                    .level(*level);
                crumb.timestamp = now.epoch(*timestamp);
                crumb.data = fields
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), v.clone()))
                    .collect();
                crumb
            }
        };
        crumb.message.clone_from(&self.message);
        crumb
    }
}

impl From<Breadcrumb> for Crumb {
    fn from(mut crumb: Breadcrumb) -> Self {
        Self {
            message: crumb.message.take(),
            kind: CrumbKind::Given(Box::new(crumb)),
        }
    }
}

/// What a [`Source`] contributes to a domain's data.
#[derive(Clone)]
#[cfg_attr(not(feature = "tower"), allow(dead_code))]
pub(crate) struct Lazy {
    pub(crate) source: Arc<dyn Source>,
    /// Whether the source names the domain (a domain created inside names itself).
    pub(crate) names: bool,
    /// The status the source's tags report (the tower layer's response status), frozen
    /// with each snapshot like any tag.
    pub(crate) status: Option<u16>,
}

impl fmt::Debug for Lazy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lazy")
            .field("names", &self.names)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// Data of a domain that costs something to make (the tower layer's request headers):
/// kept as it came and turned into tags and context entries only when an event is
/// assembled, on the agent's thread. Tags and context set on the domain itself win.
#[cfg_attr(not(feature = "tower"), allow(dead_code))]
pub(crate) trait Source: Send + Sync + 'static {
    /// The domain's name, when the source names it.
    fn name(&self) -> String;
    /// The source's value of one tag, without making the others.
    fn tag(&self, key: &str, status: Option<u16>) -> Option<String>;
    /// Adds the source's tags with `add`.
    fn tags(&self, status: Option<u16>, add: &mut dyn FnMut(&'static str, String));
    /// Adds the source's context entries with `add`.
    fn context(&self, add: &mut dyn FnMut(&'static str, Value));
    /// Gives the parts of [`name`](Self::name) to `add`, in order, from data fixed when the
    /// source was made. Called by the fatal-signal handler: must not allocate, lock or
    /// panic. Without it a crash record names no domain of this source.
    fn name_parts(&self, _add: &mut dyn FnMut(&str)) {}
    /// A task was spawned with [`spawn`] inside the domain (before it first runs).
    fn task_spawned(&self) {}
    /// A task spawned with [`spawn`] inside the domain panicked (called on the task's
    /// thread, before the task ends).
    fn task_panicked(&self, _panic: DomainPanic) {}
}

impl DomainData {
    /// The domain's name.
    pub(crate) fn name(&self) -> String {
        match &self.lazy {
            Some(lazy) if lazy.names => lazy.source.name(),
            _ => self.name.to_string(),
        }
    }

    /// One tag, set on the domain or by its source.
    #[cfg_attr(not(feature = "tower"), allow(dead_code))]
    pub(crate) fn tag(&self, key: &str) -> Option<String> {
        self.tags.get(key).cloned().or_else(|| {
            let lazy = self.lazy.as_ref()?;
            lazy.source.tag(key, lazy.status)
        })
    }

    /// The name, tags and context an event carries: the source's filled in under what
    /// the domain set itself. For the agent's thread (the source's data is made here).
    pub(crate) fn resolve(&self) -> (String, BTreeMap<String, String>, BTreeMap<String, Value>) {
        let mut tags = self.tags.clone();
        let mut context = self.context.clone();
        if let Some(lazy) = &self.lazy {
            lazy.source.tags(lazy.status, &mut |k, v| {
                tags.entry(k.to_owned()).or_insert(v);
            });
            lazy.source.context(&mut |k, v| {
                context.entry(k.to_owned()).or_insert(v);
            });
        }
        if !self.spans.is_empty()
            && let Value::Object(spans) = context
                .entry("spans".to_owned())
                .or_insert_with(|| Value::Object(serde_json::Map::new()))
        {
            for (name, fields) in &self.spans {
                let fields = fields.iter().map(|(k, v)| (k.clone(), v.clone()));
                spans.insert((*name).to_owned(), Value::Object(fields.collect()));
            }
        }
        (self.name(), tags, context)
    }
}

/// A named scope whose tags, context and breadcrumbs go with every event captured inside.
///
/// Cloning is cheap and clones share the data. A domain created inside another inherits
/// the parent's tags, context and breadcrumbs at that moment.
///
/// ```
/// # async fn handle() -> Result<u32, std::io::Error> { Ok(1) }
/// # async fn demo() {
/// let domain = errscope::Domain::new("GET /orders/:id").tag("request_id", 42);
/// match domain.run(handle()).await {
///     Ok(Ok(order)) => { /* 200 */ }
///     Ok(Err(e)) => { errscope::capture_error(&e); /* 502 */ }
///     Err(panic) => { /* 500, quote panic.event_id */ }
/// }
/// # }
/// ```
#[derive(Clone)]
pub struct Domain {
    inner: Arc<Inner>,
}

struct Inner {
    mark: Mark,
    data: Mutex<Arc<DomainData>>,
}

/// What identifies a domain to the fatal-signal handler, fixed at creation: read through
/// `MARK` while the domain is current, with no lock.
pub(crate) struct Mark {
    /// Unique in the process, from 1.
    id: u64,
    /// The name given to [`Domain::new`] (shared with the data's), or empty.
    name: Arc<str>,
    /// The source that names the domain, if one does (see [`Source::name_parts`]).
    source: Option<Arc<dyn Source>>,
}

impl fmt::Debug for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let data = self.snapshot();
        f.debug_struct("Domain")
            .field("name", &data.name())
            .field("tags", &data.tags)
            .finish_non_exhaustive()
    }
}

impl Domain {
    /// A new domain; inside another domain it starts with a copy of the parent's data.
    #[must_use]
    pub fn new(name: impl Into<String>) -> Self {
        let mut data = current()
            .map(|parent| DomainData::clone(&parent.snapshot()))
            .unwrap_or_default();
        data.name = Arc::from(name.into());
        if let Some(lazy) = &mut data.lazy {
            lazy.names = false;
        }
        Self::from_data(data)
    }

    /// A domain named by `source`, whose tags and context come from it when an event
    /// needs them. Inside another domain, the parent's tags and context entries of the
    /// same keys (`tag_keys`, `context_keys`) give way to the source's.
    #[cfg_attr(not(feature = "tower"), allow(dead_code))]
    pub(crate) fn with_source(
        source: Arc<dyn Source>,
        tag_keys: &[&str],
        context_keys: &[&str],
    ) -> Self {
        let mut data = match current() {
            None => DomainData::default(),
            Some(parent) => {
                let mut data = DomainData::clone(&parent.snapshot());
                data.name = Arc::default();
                data.tags.retain(|k, _| !tag_keys.contains(&k.as_str()));
                data.context
                    .retain(|k, _| !context_keys.contains(&k.as_str()));
                data
            }
        };
        data.lazy = Some(Lazy {
            source,
            names: true,
            status: None,
        });
        Self::from_data(data)
    }

    fn from_data(data: DomainData) -> Self {
        let mark = Mark {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            name: Arc::clone(&data.name),
            source: data
                .lazy
                .as_ref()
                .filter(|l| l.names)
                .map(|l| Arc::clone(&l.source)),
        };
        Self {
            inner: Arc::new(Inner {
                mark,
                data: Mutex::new(Arc::new(data)),
            }),
        }
    }

    /// Sets the status the domain's source reports (see [`Lazy::status`]).
    #[cfg_attr(not(feature = "tower"), allow(dead_code))]
    pub(crate) fn set_source_status(&self, status: u16) {
        self.update(|d| {
            if let Some(lazy) = &mut d.lazy {
                lazy.status = Some(status);
            }
        });
    }

    /// The domain's source, if it has one.
    #[cfg_attr(not(feature = "tower"), allow(dead_code))]
    pub(crate) fn source(&self) -> Option<Arc<dyn Source>> {
        let guard = self
            .inner
            .data
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        guard.lazy.as_ref().map(|l| Arc::clone(&l.source))
    }

    /// The domain the calling code runs in, if any.
    #[must_use]
    pub fn current() -> Option<Self> {
        current()
    }

    fn update(&self, f: impl FnOnce(&mut DomainData)) {
        let mut guard = self
            .inner
            .data
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        f(Arc::make_mut(&mut guard));
    }

    pub(crate) fn snapshot(&self) -> Arc<DomainData> {
        Arc::clone(
            &self
                .inner
                .data
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// Whether both handles are clones of one domain.
    #[cfg_attr(not(feature = "tracing"), allow(dead_code))]
    pub(crate) fn ptr_eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// The domain's name.
    #[must_use]
    pub fn name(&self) -> String {
        self.snapshot().name()
    }

    /// Adds a tag (builder form of [`set_tag`](Self::set_tag)).
    #[must_use]
    pub fn tag(self, key: impl Into<String>, value: impl fmt::Display) -> Self {
        self.set_tag(key, value);
        self
    }

    /// Sets a tag on this domain; later captures carry it.
    pub fn set_tag(&self, key: impl Into<String>, value: impl fmt::Display) {
        let (key, value) = (key.into(), value.to_string());
        self.update(|d| {
            d.tags.insert(key, value);
        });
    }

    /// Adds a context entry (builder form of [`set_context`](Self::set_context)).
    #[must_use]
    pub fn context(self, key: impl Into<String>, value: impl Serialize) -> Self {
        self.set_context(key, value);
        self
    }

    /// Sets a context entry, stored under `contexts.domain.data.<key>` of each event.
    /// Values under secret-looking keys are scrubbed before storage.
    pub fn set_context(&self, key: impl Into<String>, value: impl Serialize) {
        let key = key.into();
        let value = serde_json::to_value(value).unwrap_or(Value::Null);
        self.update(|d| {
            d.context.insert(key, value);
        });
    }

    /// Keeps the fields of an entered `tracing` span (see [`DomainData::spans`]).
    #[cfg_attr(not(feature = "tracing"), allow(dead_code))]
    pub(crate) fn add_span(&self, name: &'static str, fields: Arc<BTreeMap<String, Value>>) {
        self.update(|d| {
            d.spans.insert(name, fields);
        });
    }

    /// Records a breadcrumb (the last 100 are kept).
    pub fn add_breadcrumb(&self, crumb: Breadcrumb) {
        self.add_crumb(Crumb::from(crumb));
    }

    /// Records a breadcrumb kept as a [`Crumb`].
    pub(crate) fn add_crumb(&self, crumb: Crumb) {
        let mut evicted = None;
        self.update(|d| {
            if d.breadcrumbs.len() >= MAX_BREADCRUMBS {
                evicted = d.breadcrumbs.pop_front();
            }
            d.breadcrumbs.push_back(crumb);
        });
        // After the lock: the oldest crumb's buffers serve the thread's next one.
        if let Some(old) = evicted {
            recycle(old);
        }
    }

    /// Runs `f` inside this domain. A panic in `f` is recorded (with this domain's data,
    /// committed before this returns) and returned as [`DomainPanic`].
    pub fn run_sync<T>(&self, f: impl FnOnce() -> T) -> Result<T, DomainPanic> {
        let _enter = Enter::new(self.clone());
        let _ = LAST_PANIC.try_with(|p| p.set(None));
        catch_unwind(AssertUnwindSafe(f)).map_err(|payload| self.panicked(&*payload))
    }

    /// Runs a future inside this domain: each poll sees it as the current domain. A panic
    /// while polling is recorded and returned as [`DomainPanic`].
    pub fn run<F: Future>(&self, fut: F) -> DomainRun<F> {
        DomainRun {
            fut: Box::pin(fut),
            domain: self.clone(),
        }
    }

    /// Polls `fut` inside this domain, catching a panic as [`Domain::run`] does. A future
    /// that panicked must not be polled again.
    pub(crate) fn poll_in<F: Future>(
        &self,
        fut: Pin<&mut F>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<F::Output, DomainPanic>> {
        let _enter = Enter::new(self.clone());
        let _ = LAST_PANIC.try_with(|p| p.set(None));
        match catch_unwind(AssertUnwindSafe(|| poll_opaque(fut, cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => Poll::Ready(Err(self.panicked(&*payload))),
        }
    }

    fn panicked(&self, payload: &(dyn std::any::Any + Send)) -> DomainPanic {
        DomainPanic {
            event_id: LAST_PANIC
                .try_with(std::cell::Cell::take)
                .ok()
                .flatten()
                .unwrap_or_else(EventId::nil),
            message: panic_message(payload),
            domain: self.name(),
        }
    }
}

/// The message of a panic payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "Box<dyn Any>".to_owned()
    }
}

/// Called by the panic hook with the id of the event it recorded.
pub(crate) fn set_last_panic(id: EventId) {
    let _ = LAST_PANIC.try_with(|p| p.set(Some(id)));
}

/// The current domain: the innermost `run`, `run_sync` or `in_current_domain` scope.
pub(crate) fn current() -> Option<Domain> {
    CURRENT
        .try_with(|c| c.try_borrow().ok()?.clone())
        .ok()
        .flatten()
}

/// Whether a domain is current (no reference count touched).
#[cfg_attr(not(feature = "tracing"), allow(dead_code))]
pub(crate) fn is_current() -> bool {
    CURRENT
        .try_with(|c| c.try_borrow().is_ok_and(|d| d.is_some()))
        .unwrap_or(false)
}

/// Calls `f` with the current domain, borrowed from the thread-local (no clone). `f`
/// must not run the host's code: a domain entered inside it would not become current.
#[cfg_attr(not(feature = "tracing"), allow(dead_code))]
pub(crate) fn with_current<R>(f: impl FnOnce(&Domain) -> R) -> Option<R> {
    CURRENT
        .try_with(|c| c.try_borrow().ok()?.as_ref().map(f))
        .ok()
        .flatten()
}

/// For the fatal-signal handler: the current domain's id (0: none), its name copied into
/// `out` (cut at `out.len()` bytes; the rest of `out` is left as it was). Async-signal-safe:
/// a load from a const-initialized thread-local, then bytes of a [`Mark`] that its `Enter`
/// keeps alive; no allocation, no lock.
pub(crate) fn signal_safe_current(out: &mut [u8]) -> u64 {
    let Ok(ptr) = MARK.try_with(Cell::get) else {
        return 0;
    };
    if ptr.is_null() {
        return 0;
    }
    // SAFETY: `MARK` is non-null only between `Enter::new` making the domain current and
    // its `Drop` putting the previous one back; all that time `CURRENT` (or the `Enter`
    // itself) holds a clone of the domain, so its `Inner`, and the `Mark` in it, is alive.
    // The `Mark` is never written after creation.
    let mark = unsafe { &*ptr };
    let mut at = 0;
    let mut put = |part: &str| {
        for &b in part.as_bytes() {
            if let Some(slot) = out.get_mut(at) {
                *slot = b;
                at += 1;
            }
        }
    };
    match &mark.source {
        Some(source) => source.name_parts(&mut put),
        None => put(&mark.name),
    }
    mark.id
}

/// Makes a domain current until dropped, then restores the previous one.
struct Enter {
    /// `None` when the domain could not be made current (the thread is ending).
    prev: Option<Option<Domain>>,
}

impl Enter {
    fn new(domain: Domain) -> Self {
        let mark: *const Mark = &raw const domain.inner.mark;
        let prev = CURRENT
            .try_with(|c| c.try_borrow_mut().ok().map(|mut c| c.replace(domain)))
            .ok()
            .flatten();
        if prev.is_some() {
            // After the domain is in `CURRENT` (which keeps it alive), as a signal handler
            // interrupting this thread sees it.
            compiler_fence(Ordering::SeqCst);
            let _ = MARK.try_with(|m| m.set(mark));
        }
        Self { prev }
    }
}

impl Drop for Enter {
    fn drop(&mut self) {
        let Some(prev) = self.prev.take() else {
            return;
        };
        let restored = CURRENT.try_with(|c| {
            if let Ok(mut c) = c.try_borrow_mut() {
                let mark = prev
                    .as_ref()
                    .map_or(std::ptr::null(), |d| &raw const d.inner.mark);
                let _ = MARK.try_with(|m| m.set(mark));
                // Before this domain leaves `CURRENT` (and may be freed).
                compiler_fence(Ordering::SeqCst);
                *c = prev;
            }
        });
        if restored.is_err() {
            // The thread is ending and `CURRENT` is gone with the domain it held.
            let _ = MARK.try_with(|m| m.set(std::ptr::null()));
        }
    }
}

/// A panic caught by [`Domain::run`] or [`Domain::run_sync`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DomainPanic {
    /// The id of the stored panic event (nil when errscope is not initialized).
    pub event_id: EventId,
    /// The panic message.
    pub message: String,
    /// The name of the domain.
    pub domain: String,
}

impl fmt::Display for DomainPanic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "panic in {}: {} (event {})",
            self.domain, self.message, self.event_id
        )
    }
}

impl std::error::Error for DomainPanic {}

/// The future of [`Domain::run`].
#[must_use = "futures do nothing unless polled"]
pub struct DomainRun<F> {
    // Boxed so that this type is `Unpin` without unsafe pin projection.
    fut: Pin<Box<F>>,
    domain: Domain,
}

impl<F> fmt::Debug for DomainRun<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DomainRun")
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

impl<F: Future> Future for DomainRun<F> {
    type Output = Result<F::Output, DomainPanic>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        this.domain.poll_in(this.fut.as_mut(), cx)
    }
}

/// A future that runs inside a domain (see [`DomainExt`]).
#[must_use = "futures do nothing unless polled"]
pub struct InDomain<F> {
    fut: Pin<Box<F>>,
    domain: Option<Domain>,
}

impl<F> fmt::Debug for InDomain<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InDomain")
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

impl<F: Future> Future for InDomain<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let _enter = this.domain.clone().map(Enter::new);
        poll_opaque(this.fut.as_mut(), cx)
    }
}

/// Polls the host's future through a function pointer the optimizer cannot see through,
/// so that its code is not inlined into the agent's `poll`: in a build without debug info
/// the host's frames keep symbols of their own (`shop::handler::{{closure}}`) instead of
/// `<errscope::domain::DomainRun<F> as Future>::poll`. One indirect call per poll.
#[inline(always)]
fn poll_opaque<F: Future>(fut: Pin<&mut F>, cx: &mut Context<'_>) -> Poll<F::Output> {
    let poll: fn(Pin<&mut F>, &mut Context<'_>) -> Poll<F::Output> = F::poll;
    std::hint::black_box(poll)(fut, cx)
}

/// Carries a domain into futures that run elsewhere (spawned tasks, `select!` arms).
pub trait DomainExt: Future + Sized {
    /// Runs this future in the domain current *now* (if any), wherever it is polled.
    fn in_current_domain(self) -> InDomain<Self> {
        InDomain {
            fut: Box::pin(self),
            domain: current(),
        }
    }

    /// Runs this future in `domain`. Unlike [`Domain::run`], panics are not caught here.
    fn in_domain(self, domain: &Domain) -> InDomain<Self> {
        InDomain {
            fut: Box::pin(self),
            domain: Some(domain.clone()),
        }
    }
}

impl<F: Future> DomainExt for F {}

/// `tokio::spawn` that carries the current domain into the task: captures and panics in
/// the task carry the domain's data. Must be called inside a tokio runtime. Under the
/// `tower` feature's `ErrorLayer`, a panic in the task also answers the request with a
/// `500` at once.
#[cfg(feature = "tokio")]
pub fn spawn<F>(fut: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let domain = current();
    if let Some(source) = domain.as_ref().and_then(Domain::source) {
        source.task_spawned();
    }
    tokio::spawn(TaskPanics {
        fut: Box::pin(fut.in_current_domain()),
        domain,
    })
}

/// Tells the domain's [`Source`] about a panic of a spawned task, then lets the
/// panic go on to tokio (the `JoinHandle` still reports it).
#[cfg(feature = "tokio")]
struct TaskPanics<F> {
    fut: Pin<Box<F>>,
    domain: Option<Domain>,
}

#[cfg(feature = "tokio")]
impl<F: Future> Future for TaskPanics<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let _ = LAST_PANIC.try_with(|p| p.set(None));
        match catch_unwind(AssertUnwindSafe(|| this.fut.as_mut().poll(cx))) {
            Ok(poll) => poll,
            Err(payload) => {
                if let Some(domain) = &this.domain
                    && let Some(source) = domain.source()
                {
                    let panic = domain.panicked(&*payload);
                    let _ = catch_unwind(AssertUnwindSafe(|| source.task_panicked(panic)));
                }
                std::panic::resume_unwind(payload)
            }
        }
    }
}

/// Calls `f` with the current domain, if there is one.
pub fn with_domain<R>(f: impl FnOnce(&Domain) -> R) -> Option<R> {
    current().map(|d| f(&d))
}

/// Adds a breadcrumb to the current domain; without one, the breadcrumb is dropped.
pub fn add_breadcrumb(crumb: Breadcrumb) {
    if let Some(d) = current() {
        d.add_breadcrumb(crumb);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_domains_inherit_and_restore() {
        assert!(current().is_none());
        let outer = Domain::new("outer").tag("a", 1).tag("b", "x");
        let r = outer.run_sync(|| {
            assert_eq!(current().map(|d| d.name()).as_deref(), Some("outer"));
            let inner = Domain::new("inner").tag("b", "y");
            inner
                .run_sync(|| {
                    let d = current().map(|d| d.snapshot());
                    let d = d.as_deref().cloned().unwrap_or_default();
                    assert_eq!(&*d.name, "inner");
                    assert_eq!(d.tags.get("a").map(String::as_str), Some("1"));
                    assert_eq!(d.tags.get("b").map(String::as_str), Some("y"));
                })
                .is_ok()
        });
        assert_eq!(r.ok(), Some(true));
        assert!(current().is_none());
        // The parent is not changed by the child.
        assert_eq!(
            outer.snapshot().tags.get("b").map(String::as_str),
            Some("x")
        );
    }

    #[test]
    fn snapshots_do_not_see_later_changes() {
        let d = Domain::new("d").tag("k", "before");
        let snap = d.snapshot();
        d.set_tag("k", "after");
        assert_eq!(snap.tags.get("k").map(String::as_str), Some("before"));
        assert_eq!(
            d.snapshot().tags.get("k").map(String::as_str),
            Some("after")
        );
    }

    struct Request;

    impl Source for Request {
        fn name(&self) -> String {
            "GET /orders/{id}".to_owned()
        }

        fn tag(&self, key: &str, status: Option<u16>) -> Option<String> {
            match key {
                "route" => Some("/orders/{id}".to_owned()),
                "status" => status.map(|s| s.to_string()),
                _ => None,
            }
        }

        fn tags(&self, status: Option<u16>, add: &mut dyn FnMut(&'static str, String)) {
            for key in ["route", "status"] {
                if let Some(v) = self.tag(key, status) {
                    add(key, v);
                }
            }
        }

        fn context(&self, add: &mut dyn FnMut(&'static str, Value)) {
            add("request", serde_json::json!({"path": "/orders/7"}));
        }

        fn name_parts(&self, add: &mut dyn FnMut(&str)) {
            add("GET ");
            add("/orders/{id}");
        }
    }

    /// What the fatal-signal handler reads: (id, name) of the current domain.
    fn signal_view() -> Option<(u64, String)> {
        let mut name = [0u8; 12];
        let id = signal_safe_current(&mut name);
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        (id != 0).then(|| (id, String::from_utf8_lossy(&name[..end]).into_owned()))
    }

    #[test]
    fn the_signal_view_follows_the_current_domain_and_is_bounded() {
        assert_eq!(signal_view(), None);
        let outer = Domain::new("outer");
        let inner = Domain::new("a long inner name");
        assert_ne!(outer.inner.mark.id, inner.inner.mark.id);
        let seen = outer
            .run_sync(|| {
                let before = signal_view();
                let nested = inner.run_sync(signal_view).expect("no panic");
                (before, nested, signal_view())
            })
            .expect("no panic");
        let outer_view = Some((outer.inner.mark.id, "outer".to_owned()));
        assert_eq!(seen.0, outer_view);
        assert_eq!(
            seen.1,
            Some((inner.inner.mark.id, "a long inner".to_owned())),
            "cut at the buffer's length"
        );
        assert_eq!(seen.2, outer_view, "restored on leaving the inner one");
        assert_eq!(signal_view(), None);

        let named = Domain::with_source(Arc::new(Request), &[], &[]);
        let mut name = [0u8; 32];
        let id = named
            .run_sync(|| signal_safe_current(&mut name))
            .expect("no panic");
        assert_eq!(id, named.inner.mark.id);
        assert_eq!(&name[..16], b"GET /orders/{id}");
    }

    #[test]
    fn a_source_fills_in_under_what_the_domain_sets_and_freezes_with_snapshots() {
        let outer = Domain::new("outer").tag("route", "outer's").tag("keep", 1);
        let d = outer
            .run_sync(|| Domain::with_source(Arc::new(Request), &["route", "status"], &[]))
            .expect("no panic");
        // The parent's tag of a key the source makes gives way; the others stay.
        let (name, tags, context) = d.snapshot().resolve();
        assert_eq!(name, "GET /orders/{id}");
        assert_eq!(d.name(), "GET /orders/{id}");
        assert_eq!(tags.get("route").map(String::as_str), Some("/orders/{id}"));
        assert_eq!(tags.get("keep").map(String::as_str), Some("1"));
        assert!(!tags.contains_key("status"));
        assert_eq!(context["request"]["path"], "/orders/7");

        let before = d.snapshot();
        d.set_source_status(503);
        d.set_tag("route", "set later");
        let (_, tags, _) = d.snapshot().resolve();
        assert_eq!(tags.get("status").map(String::as_str), Some("503"));
        assert_eq!(tags.get("route").map(String::as_str), Some("set later"));
        assert_eq!(
            before.tag("status"),
            None,
            "a snapshot does not see later changes"
        );

        // A domain created inside names itself and keeps the source's data.
        let inner = d.run_sync(|| Domain::new("job")).expect("no panic");
        assert_eq!(inner.name(), "job");
        assert_eq!(inner.snapshot().tag("status").as_deref(), Some("503"));
    }

    #[test]
    fn a_full_ring_lends_its_oldest_buffers_and_no_data_goes_with_them() {
        use std::fmt::Write as _;
        let d = Domain::new("d");
        for i in 0..250usize {
            let (mut message, mut fields) = crumb_buffers();
            if i > MAX_BREADCRUMBS {
                // The crumb pushed out by the last one lent its (emptied) buffers.
                assert!(message.is_empty() && message.capacity() > 0, "crumb {i}");
                assert!(fields.is_empty(), "crumb {i}");
            }
            let _ = write!(message, "step {i}");
            for k in 0..i % 3 {
                fields.push((["a", "b"][k], Value::from(i)));
            }
            d.add_crumb(Crumb::traced(message, Level::Warning, "shop::cart", fields));
        }
        let snap = d.snapshot();
        assert_eq!(snap.breadcrumbs.len(), MAX_BREADCRUMBS);
        let now = crate::time::Now::read();
        for (crumb, i) in snap.breadcrumbs.iter().zip(150usize..) {
            let crumb = crumb.to_breadcrumb(&now);
            assert_eq!(crumb.message, Some(format!("step {i}")));
            assert_eq!(crumb.category.as_deref(), Some("shop::cart"));
            assert_eq!(crumb.level, Level::Warning);
            let want: BTreeMap<String, Value> = ["a", "b"][..i % 3]
                .iter()
                .map(|k| ((*k).to_owned(), Value::from(i)))
                .collect();
            assert_eq!(crumb.data, want, "crumb {i}");
            assert!((crumb.timestamp - crate::time::now_epoch()).abs() < 5.0);
        }
    }

    #[test]
    fn breadcrumbs_are_bounded() {
        let d = Domain::new("d");
        for i in 0..150 {
            d.add_breadcrumb(Breadcrumb::new(format!("step {i}")));
        }
        let snap = d.snapshot();
        assert_eq!(snap.breadcrumbs.len(), MAX_BREADCRUMBS);
        assert_eq!(
            snap.breadcrumbs.front().and_then(|b| b.message.as_deref()),
            Some("step 50")
        );
    }
}
