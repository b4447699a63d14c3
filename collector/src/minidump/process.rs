//! One dump to event fields: rust-minidump's processor walks every thread's stack, with
//! the Breakpad symbol files uploaded for its modules (CFI and names, parsed once and kept
//! in [`SymbolFiles`]), under a deadline.
//!
//! The result is Sentry's native shape (`exception` with the crashing thread's stack,
//! `threads`, `debug_meta.images`, `contexts.os`/`device`); frames the `.sym` files did not
//! name are left with their addresses for [`crate::symbolicate`] (ELF debug files).

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use breakpad_symbols::{FileError, FileKind, Module, SymbolFile};
use minidump::Minidump;
use minidump::system_info::{Cpu, Os};
use minidump_processor::ProcessState;
use minidump_unwind::{
    FillSymbolError, FrameSymbolizer, FrameWalker, StackFrame, SymbolProvider, SymbolStats,
};
use serde_json::{Map, Value, json};

use super::symbols::SymbolFiles;
use crate::symbolicate::DebugFileLookup;

/// Bounds of one processing.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Wall time the stackwalk may take.
    pub timeout: Duration,
    /// Threads kept in the event (the crashing one always).
    pub threads: usize,
    /// Frames kept per thread (the newest).
    pub frames: usize,
    /// Largest Breakpad symbol file read for a stackwalk (larger ones only name frames,
    /// through the symbolicator's SymCache).
    pub sym_bytes: u64,
}

/// Why a dump could not be processed (the event says so).
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The dump's structure is broken (truncated, inconsistent).
    #[error("the minidump cannot be read: {0}")]
    Read(String),
    /// A stream runs past the end of the file: the upload was cut short.
    #[error("the minidump is truncated: stream {stream:#x} ends at byte {end}, the file has {len}")]
    Truncated {
        /// The stream's type.
        stream: u32,
        /// Where its data ends.
        end: u64,
        /// The file's length.
        len: usize,
    },
    /// The processor refused it (no thread list, no system info, ...).
    #[error("the minidump cannot be processed: {0}")]
    Process(String),
    /// The stackwalk did not finish in time.
    #[error("processing the minidump took longer than {0} s")]
    Timeout(u64),
}

/// Processes `bytes` (which start with a minidump signature) on the current thread,
/// driving the processor's futures with `rt`; returns the event fields it fills.
pub fn process(
    bytes: &[u8],
    lookup: Arc<dyn DebugFileLookup>,
    cache: Arc<SymbolFiles>,
    bounds: Bounds,
    rt: &tokio::runtime::Handle,
) -> Result<Map<String, Value>, ProcessError> {
    let dump = Minidump::read(bytes).map_err(|e| ProcessError::Read(e.to_string()))?;
    for s in dump.all_streams() {
        let end = u64::from(s.location.rva) + u64::from(s.location.data_size);
        if end > bytes.len() as u64 {
            return Err(ProcessError::Truncated {
                stream: s.stream_type,
                end,
                len: bytes.len(),
            });
        }
    }
    let provider = Bounded {
        inner: Supplier {
            lookup,
            cache,
            max_bytes: bounds.sym_bytes,
            seen: Mutex::new(HashMap::new()),
        },
        deadline: Instant::now() + bounds.timeout,
    };
    let work = minidump_processor::process_minidump(&dump, &provider);
    let state = rt
        .block_on(async { tokio::time::timeout(bounds.timeout, work).await })
        .map_err(|_| ProcessError::Timeout(bounds.timeout.as_secs()))?
        .map_err(|e| ProcessError::Process(e.to_string()))?;
    Ok(to_event(&state, bounds))
}

/// Finds the Breakpad symbol file of a module among the uploaded debug files, parsed
/// through the shared [`SymbolFiles`] cache; remembers each module's for this dump.
struct Supplier {
    lookup: Arc<dyn DebugFileLookup>,
    cache: Arc<SymbolFiles>,
    max_bytes: u64,
    /// The modules of this dump, by debug id: their symbols, or none.
    seen: Mutex<HashMap<String, Option<Arc<SymbolFile>>>>,
}

impl Supplier {
    fn ids(module: &(dyn Module + Sync)) -> Option<(String, Option<String>)> {
        let debug_id = module.debug_identifier()?;
        let debug_id = crate::symbolicate::canonical_debug_id(&debug_id.to_string())?;
        let code_id = module
            .code_identifier()
            .map(|c| c.as_str().to_ascii_lowercase());
        Some((debug_id, code_id))
    }

    fn path(&self, module: &(dyn Module + Sync)) -> Option<PathBuf> {
        let (debug_id, code_id) = Self::ids(module)?;
        self.lookup.find_breakpad(&debug_id, code_id.as_deref())
    }

    /// The module's parsed symbol file, if one was uploaded and could be read.
    fn symbols(&self, module: &(dyn Module + Sync)) -> Option<Arc<SymbolFile>> {
        let (debug_id, code_id) = Self::ids(module)?;
        if let Some(known) = self
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&debug_id)
        {
            return known.clone();
        }
        let found = self.load(&debug_id, code_id.as_deref());
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(debug_id, found.clone());
        found
    }

    fn load(&self, debug_id: &str, code_id: Option<&str>) -> Option<Arc<SymbolFile>> {
        let path = self.lookup.find_breakpad(debug_id, code_id)?;
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if size > self.max_bytes {
            tracing::info!(
                "minidumps: {} has {size} bytes, over the {} read for stackwalking",
                path.display(),
                self.max_bytes
            );
            return None;
        }
        match self.cache.get(debug_id, &path, size) {
            Ok(symbols) => {
                self.lookup.mark_used(debug_id);
                Some(symbols)
            }
            Err(e) => {
                tracing::warn!("minidumps: {}: {e}", path.display());
                None
            }
        }
    }
}

/// The symbolizer, looking at the clock at every frame: past the deadline it never
/// answers again, so the timeout around the processor ends the walk (whose futures are
/// otherwise ready at every step); before it, it yields once so the timeout can fire.
struct Bounded {
    inner: Supplier,
    deadline: Instant,
}

impl Bounded {
    async fn tick(&self) {
        if Instant::now() >= self.deadline {
            std::future::pending::<()>().await;
        }
        YieldOnce(false).await;
    }
}

/// Pending once, then ready: gives the timeout around the processor a chance to fire.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[async_trait]
impl SymbolProvider for Bounded {
    async fn fill_symbol(
        &self,
        module: &(dyn Module + Sync),
        frame: &mut (dyn FrameSymbolizer + Send),
    ) -> Result<(), FillSymbolError> {
        self.tick().await;
        let symbols = self.inner.symbols(module).ok_or(FillSymbolError {})?;
        symbols.fill_symbol(module, frame);
        Ok(())
    }

    async fn walk_frame(
        &self,
        module: &(dyn Module + Sync),
        walker: &mut (dyn FrameWalker + Send),
    ) -> Option<()> {
        self.tick().await;
        self.inner.symbols(module)?.walk_frame(module, walker)
    }

    async fn get_file_path(
        &self,
        module: &(dyn Module + Sync),
        file_kind: FileKind,
    ) -> Result<PathBuf, FileError> {
        match file_kind {
            FileKind::BreakpadSym => self.inner.path(module).ok_or(FileError::NotFound),
            _ => Err(FileError::NotFound),
        }
    }

    fn stats(&self) -> HashMap<String, SymbolStats> {
        // The event does not report them.
        HashMap::new()
    }
}

fn hex(v: u64) -> String {
    format!("{v:#x}")
}

/// Sentry's image type for the dump's OS.
fn image_type(os: Os) -> &'static str {
    match os {
        Os::Windows => "pe",
        Os::MacOs | Os::Ios => "macho",
        _ => "elf",
    }
}

fn os_name(os: Os) -> &'static str {
    match os {
        Os::Windows => "Windows",
        Os::MacOs => "macOS",
        Os::Ios => "iOS",
        Os::Linux => "Linux",
        Os::Android => "Android",
        Os::Solaris => "Solaris",
        _ => "unknown",
    }
}

/// Sentry's architecture names.
fn arch(cpu: Cpu) -> &'static str {
    match cpu {
        Cpu::X86 => "x86",
        Cpu::X86_64 => "x86_64",
        Cpu::Arm => "arm",
        Cpu::Arm64 => "arm64",
        Cpu::Ppc => "ppc",
        Cpu::Ppc64 => "ppc64",
        Cpu::Mips => "mips",
        Cpu::Mips64 => "mips64",
        Cpu::Sparc => "sparc",
        _ => "unknown",
    }
}

/// One frame in Sentry's shape: its address, module, and what the symbols said.
fn frame_json(f: &StackFrame) -> Value {
    let mut m = Map::new();
    m.insert("instruction_addr".into(), hex(f.instruction).into());
    if let Some(module) = &f.module {
        m.insert("package".into(), module.code_file().into_owned().into());
        m.insert("image_addr".into(), hex(module.base_address()).into());
    }
    if let Some(name) = &f.function_name {
        m.insert("function".into(), name.clone().into());
        if let Some(base) = f.function_base {
            m.insert("symbol_addr".into(), hex(base).into());
        }
    }
    if let Some(file) = &f.source_file_name {
        m.insert("filename".into(), file.clone().into());
        m.insert("abs_path".into(), file.clone().into());
    }
    if let Some(line) = f.source_line {
        m.insert("lineno".into(), line.into());
    }
    m.insert("trust".into(), trust(f).into());
    Value::Object(m)
}

fn trust(f: &StackFrame) -> &'static str {
    use minidump_unwind::FrameTrust::*;
    match f.trust {
        None => "none",
        Scan => "scan",
        CfiScan => "cfi-scan",
        FramePointer => "fp",
        CallFrameInfo => "cfi",
        PreWalked => "prewalked",
        Context => "context",
    }
}

/// A thread's frames, oldest first (Sentry's order), the newest `max` of them; inlined
/// functions the `.sym` file lists become frames of their own.
fn stacktrace(frames: &[StackFrame], max: usize, registers: Option<Value>) -> Value {
    let mut out = Vec::new();
    for f in frames.iter().take(max) {
        // `inlines` run from the innermost call outward; each sits at the frame's address.
        for inl in &f.inlines {
            let mut j = frame_json(f);
            if let Value::Object(m) = &mut j {
                m.insert("function".into(), inl.function_name.clone().into());
                m.remove("symbol_addr");
                m.remove("filename");
                m.remove("abs_path");
                m.remove("lineno");
                if let Some(file) = &inl.source_file_name {
                    m.insert("filename".into(), file.clone().into());
                    m.insert("abs_path".into(), file.clone().into());
                }
                if let Some(line) = inl.source_line {
                    m.insert("lineno".into(), line.into());
                }
            }
            out.push(j);
        }
        out.push(frame_json(f));
    }
    out.reverse();
    let mut st = json!({
        "frames": out,
        // The processor's addresses are already the call instructions' (return address
        // minus one) for every caller frame.
        "instruction_addr_adjustment": "none",
    });
    if let Some(r) = registers {
        st["registers"] = r;
    }
    st
}

/// The crashing thread's registers, as hex strings.
fn registers(frames: &[StackFrame]) -> Option<Value> {
    let ctx = &frames.first()?.context;
    let regs: Map<String, Value> = ctx
        .valid_registers()
        .map(|(name, v)| (name.to_owned(), hex(v).into()))
        .collect();
    Some(Value::Object(regs))
}

/// The event fields a processed dump fills.
fn to_event(state: &ProcessState, bounds: Bounds) -> Map<String, Value> {
    let os = state.system_info.os;
    let crashed = state.requesting_thread;
    let mut ev = Map::new();
    let mut threads = Vec::new();
    for (i, t) in state.threads.iter().enumerate() {
        if threads.len() >= bounds.threads && Some(i) != crashed {
            continue;
        }
        let mut th = json!({
            "id": t.thread_id,
            "crashed": Some(i) == crashed,
            "current": Some(i) == crashed,
        });
        if let Some(name) = t.thread_name.as_deref().filter(|n| !n.is_empty()) {
            th["name"] = name.into();
        }
        if !t.frames.is_empty() {
            let regs = (Some(i) == crashed).then(|| registers(&t.frames)).flatten();
            th["stacktrace"] = stacktrace(&t.frames, bounds.frames, regs);
        }
        threads.push(th);
    }
    if let Some(info) = &state.exception_info {
        let reason = info.reason.to_string();
        // `EXC_BAD_ACCESS / KERN_INVALID_ADDRESS`: the type, then the detail in the value.
        let (ty, detail) = match reason.split_once(" / ") {
            Some((ty, rest)) => (ty.to_owned(), format!("{rest}, ")),
            None => (reason.clone(), String::new()),
        };
        let mut ex = json!({
            "type": ty,
            "value": format!("{detail}address {}", hex(info.address.0)),
            "mechanism": {
                "type": "minidump",
                "handled": false,
                "synthetic": true,
                "data": { "crash_reason": reason, "crash_address": hex(info.address.0) },
            },
        });
        if let Some(i) = crashed {
            let t = &state.threads[i];
            ex["thread_id"] = t.thread_id.into();
            if !t.frames.is_empty() {
                ex["stacktrace"] = stacktrace(&t.frames, bounds.frames, registers(&t.frames));
            }
        }
        ev.insert("exception".into(), json!({ "values": [ex] }));
    } else if let Some(assertion) = &state.assertion {
        ev.insert("message".into(), assertion.clone().into());
    }
    ev.insert("threads".into(), json!({ "values": threads }));
    let images: Vec<Value> = state
        .modules
        .iter()
        .map(|m| {
            let mut img = json!({
                "type": image_type(os),
                "code_file": m.code_file(),
                "image_addr": hex(m.base_address()),
                "image_size": m.size(),
                "arch": arch(state.system_info.cpu),
            });
            if let Some(id) = m.code_identifier() {
                img["code_id"] = id.as_str().to_ascii_lowercase().into();
            }
            if let Some(f) = m.debug_file() {
                img["debug_file"] = f.into_owned().into();
            }
            if let Some(id) = m.debug_identifier() {
                img["debug_id"] = id.to_string().to_ascii_lowercase().into();
            }
            img
        })
        .collect();
    ev.insert("debug_meta".into(), json!({ "images": images }));
    let mut os_ctx = json!({ "type": "os", "name": os_name(os) });
    if let Some(v) = &state.system_info.os_version {
        os_ctx["version"] = v.clone().into();
    }
    if let Some(b) = &state.system_info.os_build {
        os_ctx["build"] = b.clone().into();
    }
    let mut device = json!({ "type": "device", "arch": arch(state.system_info.cpu) });
    if let Some(cpu) = &state.system_info.cpu_info {
        device["cpu_description"] = cpu.clone().into();
    }
    ev.insert("contexts".into(), json!({ "os": os_ctx, "device": device }));
    if let Ok(t) = state.time.duration_since(std::time::UNIX_EPOCH)
        && t.as_secs() > 0
    {
        ev.insert("timestamp".into(), t.as_secs().into());
    }
    ev
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::symbolicate::DirectoryLookup;

    fn linux_dump() -> Vec<u8> {
        std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/minidumps/linux-mini.dmp"
        ))
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn the_deadline_stops_a_stackwalk() {
        let bytes = linux_dump();
        let rt = tokio::runtime::Handle::current();
        let run = move |timeout| {
            let (bytes, rt) = (bytes.clone(), rt.clone());
            tokio::task::spawn_blocking(move || {
                let bounds = Bounds {
                    timeout,
                    threads: 64,
                    frames: 256,
                    sym_bytes: 1 << 20,
                };
                process(
                    &bytes,
                    Arc::new(DirectoryLookup::default()),
                    Arc::new(SymbolFiles::new(1 << 20)),
                    bounds,
                    &rt,
                )
            })
        };
        let e = run(Duration::ZERO).await.unwrap().unwrap_err();
        assert!(matches!(e, ProcessError::Timeout(0)), "{e}");
        let ev = run(Duration::from_secs(30)).await.unwrap().unwrap();
        assert_eq!(ev["exception"]["values"][0]["type"], "SIGSEGV");
        // Bounds on what the event keeps.
        let bounds = Bounds {
            timeout: Duration::from_secs(30),
            threads: 0,
            frames: 1,
            sym_bytes: 0,
        };
        let bytes = linux_dump();
        let ev = tokio::task::spawn_blocking(move || {
            let rt = tokio::runtime::Handle::current();
            process(
                &bytes,
                Arc::new(DirectoryLookup::default()),
                Arc::new(SymbolFiles::new(1 << 20)),
                bounds,
                &rt,
            )
        })
        .await
        .unwrap()
        .unwrap();
        let threads = ev["threads"]["values"].as_array().unwrap();
        assert_eq!(threads.len(), 1, "only the crashing thread");
        assert_eq!(
            threads[0]["stacktrace"]["frames"].as_array().unwrap().len(),
            1
        );
    }
}
