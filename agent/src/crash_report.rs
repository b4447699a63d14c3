//! What a fatal signal leaves behind: each run's file beside the outbox (a header written at
//! `init`, the handler's record appended), and at the next start the events made of them.
//!
//! A run file is named `<outbox file>-run-<run id>` and held under `flock` for the life of
//! its process, so the next start (of this program or another sharing the outbox) takes only
//! the files of runs that are over. Their records become normal events on the agent's
//! thread, before anything of the new run is written: level fatal, mechanism
//! `signalhandler`, classed `SIGSEGV`, `stack overflow`, `out of memory`, `abort`, ...,
//! symbolicated when the previous run was the same binary (same build id), else addresses
//! only.

use std::collections::BTreeMap;
use std::ffi::{CStr, c_int, c_void};
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::crash::CrashRecord;
use crate::event::{
    Event, EventId, Exception, Frame, Level, Mechanism, MechanismMeta, Signal, Stacktrace, Thread,
    Values,
};
use crate::shared::Shared;
use crate::store::Row;
use crate::trace::{RawTrace, Resolver};
use crate::warn;

/// A loaded object (the executable or a shared library) of a run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Module {
    pub(crate) path: String,
    /// Where it is loaded: addresses in it are `base + offset in the file`.
    pub(crate) base: u64,
    /// Its executable segments.
    pub(crate) start: u64,
    pub(crate) end: u64,
    /// The GNU build id, hex.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub(crate) build_id: Option<String>,
}

/// The first line of a run file, written at `init`.
#[derive(Debug, Serialize, Deserialize)]
struct RunHeader {
    /// 32 hex digits; also the id of the event a crash of this run becomes, so two
    /// processes taking the same file store one event.
    run_id: String,
    pid: u32,
    /// Seconds since the epoch.
    started: f64,
    #[serde(default)]
    release: Option<String>,
    #[serde(default)]
    environment: Option<String>,
    #[serde(default)]
    modules: Vec<Module>,
}

/// `outbox.db` → `outbox.db-run-`.
fn run_prefix(database: &Path) -> Option<String> {
    Some(format!("{}-run-", database.file_name()?.to_str()?))
}

/// Creates this run's file and installs the fatal-signal handlers that write into it
/// (once per process; not when `catch_signals` is off).
pub(crate) fn install(shared: &Shared) {
    crate::crash::install(shared, || create_run_file(shared));
}

/// Creates, locks and heads this run's file; returns it and the header's length (where the
/// handler writes its record). `None` if the outbox's directory is unusable (the outbox
/// itself reports that).
fn create_run_file(shared: &Shared) -> Option<(File, u64)> {
    let database = shared.options.database_path();
    let dir = database.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir).ok()?;
    }
    let run_id = shared.run_id.clone();
    let final_path = database.with_file_name(format!("{}{run_id}", run_prefix(&database)?));
    // Made under another name and renamed once locked and headed: the agent's thread may
    // be looking for dead runs right now, and must not take this one for one.
    let name = database.file_name()?.to_str()?;
    let path = database.with_file_name(format!("{name}-new-{run_id}"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .ok()?;
    // SAFETY: flock(2) on a descriptor this function owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let _ = std::fs::remove_file(&path);
        return None;
    }
    let header = RunHeader {
        run_id,
        pid: std::process::id(),
        started: crate::time::now_epoch(),
        release: shared.options.release.clone(),
        environment: shared.options.environment.clone(),
        modules: loaded_modules(),
    };
    let mut line = serde_json::to_vec(&header).ok()?;
    line.push(b'\n');
    if file.write_all(&line).is_err() || std::fs::rename(&path, &final_path).is_err() {
        let _ = std::fs::remove_file(&path);
        return None;
    }
    Some((file, line.len() as u64))
}

/// A run file whose process is gone, locked by us while we read and deliver it.
struct DeadRun {
    path: PathBuf,
    bytes: Vec<u8>,
    _lock: File,
}

/// The run files beside the outbox that no living process holds.
fn dead_runs(database: &Path) -> Vec<DeadRun> {
    let Some(prefix) = run_prefix(database) else {
        return Vec::new();
    };
    let dir = match database.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut runs = Vec::new();
    for entry in entries.flatten() {
        if !entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(&prefix))
        {
            continue;
        }
        let path = entry.path();
        let Ok(mut file) = std::fs::OpenOptions::new().read(true).open(&path) else {
            continue;
        };
        // SAFETY: flock(2) on a descriptor this function owns. A living run holds its
        // lock: skip it.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            continue;
        }
        // Bounded: a header and one record; anything larger is not ours.
        let mut bytes = Vec::new();
        if (&mut file).take(1 << 20).read_to_end(&mut bytes).is_err() {
            continue;
        }
        runs.push(DeadRun {
            path,
            bytes,
            _lock: file,
        });
    }
    runs
}

/// Whether the run `run_id` is alive: its file beside the outbox is locked (by its
/// process). A run without a file (delivered, or never made) is not.
pub(crate) fn run_alive(database: &Path, run_id: &str) -> bool {
    let Some(prefix) = run_prefix(database) else {
        return false;
    };
    let Ok(file) = File::open(database.with_file_name(format!("{prefix}{run_id}"))) else {
        return false;
    };
    // SAFETY: flock(2) on a descriptor this function owns; the lock, if taken, goes with
    // the descriptor when `file` is dropped.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) != 0 }
}

/// Turns what ended runs left into events and has `commit` write them (before anything of
/// this run); deletes their files once committed. Returns the ids of the runs that died
/// by a signal (their sessions crashed). Never panics its caller.
pub(crate) fn deliver(
    shared: &Shared,
    resolver: &mut Resolver,
    os: &Value,
    commit: impl FnOnce(Vec<Row>) -> bool,
) -> Vec<String> {
    let mut crashed = Vec::new();
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let runs = dead_runs(&shared.options.database_path());
        if runs.is_empty() {
            return;
        }
        let current = loaded_modules();
        let mut rows = Vec::new();
        for run in &runs {
            let Some((header, record)) = parse(&run.bytes) else {
                continue;
            };
            let Some(record) = record else { continue };
            crashed.push(header.run_id.clone());
            let Some(event) = crash_event(&header, &record, shared, resolver, os, &current) else {
                continue;
            };
            let Some(mut event) = crate::assemble::apply_before_send(shared, event) else {
                shared
                    .counters
                    .dropped_before_send
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            };
            if shared.options.scrub {
                crate::scrub::scrub_event(&mut event, &shared.scrubber);
            }
            match serde_json::to_vec(&event) {
                Ok(payload) => rows.push(Row {
                    event_id: event.event_id.to_string(),
                    created_at: event.timestamp,
                    payload,
                }),
                Err(e) => warn(format_args!("cannot serialize a crash event: {e}")),
            }
        }
        let committed = rows.is_empty() || commit(rows);
        // Held in memory only (a degraded outbox) is not kept: leave the files for later.
        if committed && !shared.counters.degraded.load(Ordering::Relaxed) {
            for run in &runs {
                let _ = std::fs::remove_file(&run.path);
            }
        }
    }));
    if run.is_err() {
        warn(format_args!(
            "internal error while reading what an earlier run left"
        ));
    }
    crashed
}

/// The header and, if the run died by a signal, its record.
fn parse(bytes: &[u8]) -> Option<(RunHeader, Option<CrashRecord>)> {
    let nl = bytes.iter().position(|&b| b == b'\n')?;
    let header: RunHeader = serde_json::from_slice(&bytes[..nl]).ok()?;
    Some((header, CrashRecord::from_bytes(&bytes[nl + 1..])))
}

/// How far from the stack pointer a fault still counts as running off the stack. Rust
/// probes large frames page by page, so an overflow faults within a page or two of it.
const OVERFLOW_REACH: u64 = 64 * 1024;

/// The event a crash record becomes; `None` for the abort that ends a panic the hook has
/// already recorded (`panic = "abort"`).
fn crash_event(
    header: &RunHeader,
    rec: &CrashRecord,
    shared: &Shared,
    resolver: &mut Resolver,
    os: &Value,
    current: &[Module],
) -> Option<Event> {
    if rec.panicking != 0 && rec.signal == libc::SIGABRT {
        return None;
    }
    let event_id = header.run_id.parse().unwrap_or_else(|_| EventId::new());
    let timestamp = rec.time_sec as f64 + f64::from(rec.time_nsec as i32) / 1e9;
    let mut event = Event::new(event_id, timestamp, Level::Fatal);
    event.release.clone_from(&header.release);
    event.environment.clone_from(&header.environment);
    event.server_name.clone_from(&shared.server_name);
    let (frames, symbolicated) = frames_of(rec, &header.modules, current, resolver);
    let thread = rec.thread_name().unwrap_or("<unnamed>");
    let signal = signal_name(rec.signal);
    let code_name = code_name(rec.signal, rec.code);
    let (ty, value) = classify(rec, &frames, thread, signal, code_name);
    let mut data = BTreeMap::new();
    if rec.fault_addr != 0 || rec.code > 0 {
        data.insert(
            "fault_address".to_owned(),
            json!(format!("{:#x}", rec.fault_addr)),
        );
    }
    data.insert("symbolicated".to_owned(), json!(symbolicated));
    let stacktrace = (!frames.is_empty()).then(|| Stacktrace::new(frames));
    event.exception = Some(Values {
        values: vec![Exception {
            ty,
            value,
            mechanism: Some(Mechanism {
                ty: "signalhandler".to_owned(),
                handled: false,
                data,
                meta: Some(MechanismMeta {
                    errno: None,
                    signal: Some(Signal {
                        number: rec.signal,
                        code: Some(rec.code),
                        name: Some(signal.to_owned()),
                        code_name: code_name.map(str::to_owned),
                    }),
                }),
            }),
            stacktrace,
        }],
    });
    event.threads = Some(Values {
        values: vec![Thread {
            name: Some(thread.to_owned()),
            current: true,
            crashed: true,
            stacktrace: None,
        }],
    });
    event.contexts.insert("os".to_owned(), os.clone());
    event.contexts.insert(
        "thread".to_owned(),
        json!({"type": "thread", "name": thread, "id": rec.tid}),
    );
    event.contexts.insert(
        "process".to_owned(),
        json!({"type": "process", "pid": header.pid, "started": header.started}),
    );
    // As events captured inside a domain carry it (API.md): the tag `domain` and
    // `contexts.domain`; the handler knows the name and the run's id of the domain, not
    // its tags and data (they sit behind the domain's lock).
    if let Some((id, name)) = rec.domain() {
        event.contexts.insert(
            "domain".to_owned(),
            json!({"type": "domain", "name": name, "id": id, "tags": {}, "data": {}}),
        );
        event.tags.insert("domain".to_owned(), name.to_owned());
    }
    Some(event)
}

/// The crashing thread's frames, oldest first, from the interrupted instruction outwards
/// (the handler's own frames dropped). Addresses of a module loaded now with the same
/// build id (the same binary) are moved to where it is loaded now and resolved; others
/// keep their address only. Returns whether any frame was resolved.
fn frames_of(
    rec: &CrashRecord,
    then: &[Module],
    now: &[Module],
    resolver: &mut Resolver,
) -> (Vec<Frame>, bool) {
    let all = rec.frames();
    // The walk started inside the handler; the interrupted code starts at `pc`.
    let ips: Vec<u64> = match all.iter().position(|&ip| ip == rec.pc) {
        Some(idx) => all[idx..].to_vec(),
        None if rec.pc != 0 => std::iter::once(rec.pc).chain(all.iter().copied()).collect(),
        None => all.to_vec(),
    };
    let mut newest_first: Vec<Vec<Frame>> = Vec::with_capacity(ips.len());
    let mut symbolicated = false;
    for (idx, &ip) in ips.iter().enumerate() {
        let here = relocate(ip, then, now).map(|at| {
            // Return addresses point after the call, and the resolver looks one byte back;
            // the interrupted instruction is itself the one to look up.
            let at = if idx == 0 { at + 1 } else { at };
            let mut frames = resolver.frames(&RawTrace::from_ips(vec![at as usize]));
            for f in &mut frames {
                f.instruction_addr = format!("{ip:#x}");
            }
            frames.retain(|f| f.function.is_some());
            frames
        });
        let frames = match here {
            Some(frames) if !frames.is_empty() => {
                symbolicated = true;
                frames
            }
            _ => vec![Frame {
                instruction_addr: format!("{ip:#x}"),
                ..Frame::default()
            }],
        };
        newest_first.push(frames);
    }
    (
        newest_first.into_iter().rev().flatten().collect(),
        symbolicated,
    )
}

/// Where an address of the dead run lies in this process, if the module it was in is
/// loaded here too and is the same file (same build id).
fn relocate(ip: u64, then: &[Module], now: &[Module]) -> Option<u64> {
    let old = then.iter().find(|m| m.start <= ip && ip < m.end)?;
    let old_id = old.build_id.as_deref()?;
    let new = now.iter().find(|m| m.build_id.as_deref() == Some(old_id))?;
    (ip - old.base).checked_add(new.base)
}

/// The class (exception type) and the sentence a reader sees.
fn classify(
    rec: &CrashRecord,
    frames: &[Frame],
    thread: &str,
    signal: &str,
    code_name: Option<&str>,
) -> (String, String) {
    let code = code_name.map(|c| format!(" ({c})")).unwrap_or_default();
    let faulted = matches!(rec.signal, libc::SIGSEGV | libc::SIGBUS);
    if faulted && rec.fault_addr != 0 && rec.fault_addr.abs_diff(rec.sp) <= OVERFLOW_REACH {
        return (
            "stack overflow".to_owned(),
            format!(
                "thread '{thread}' overflowed its stack ({signal}{code} at {:#x})",
                rec.fault_addr
            ),
        );
    }
    if rec.signal == libc::SIGABRT {
        let alloc_failed = frames.iter().any(|f| {
            f.function.as_deref().is_some_and(|name| {
                name.contains("handle_alloc_error")
                    || name.contains("rust_oom")
                    || name.contains("__rg_oom")
                    || name.contains("alloc_error_handler")
            })
        });
        if alloc_failed {
            return (
                "out of memory".to_owned(),
                format!(
                    "a memory allocation failed on thread '{thread}' and the process aborted ({signal})"
                ),
            );
        }
        return (
            "abort".to_owned(),
            format!("the process aborted ({signal}) on thread '{thread}'"),
        );
    }
    let at = if rec.fault_addr != 0 || rec.code > 0 {
        format!(" at {:#x}", rec.fault_addr)
    } else {
        String::new()
    };
    let what = match rec.signal {
        libc::SIGSEGV => "invalid memory access",
        libc::SIGBUS => "bus error",
        libc::SIGILL => "illegal instruction",
        libc::SIGFPE => "arithmetic exception",
        libc::SIGTRAP => "trap",
        _ => "fatal signal",
    };
    (
        signal.to_owned(),
        format!("{what}{at} on thread '{thread}' ({signal}{code})"),
    )
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGABRT => "SIGABRT",
        libc::SIGTRAP => "SIGTRAP",
        _ => "signal",
    }
}

/// The symbolic name of a `si_code` (see sigaction(2)).
fn code_name(signal: i32, code: i32) -> Option<&'static str> {
    let name = match (signal, code) {
        (_, 0) => "SI_USER",
        (_, 0x80) => "SI_KERNEL",
        (_, -1) => "SI_QUEUE",
        (_, -6) => "SI_TKILL",
        (libc::SIGSEGV, 1) => "SEGV_MAPERR",
        (libc::SIGSEGV, 2) => "SEGV_ACCERR",
        (libc::SIGBUS, 1) => "BUS_ADRALN",
        (libc::SIGBUS, 2) => "BUS_ADRERR",
        (libc::SIGBUS, 3) => "BUS_OBJERR",
        (libc::SIGILL, 1) => "ILL_ILLOPC",
        (libc::SIGILL, 2) => "ILL_ILLOPN",
        (libc::SIGILL, 3) => "ILL_ILLADR",
        (libc::SIGILL, 4) => "ILL_ILLTRP",
        (libc::SIGILL, 5) => "ILL_PRVOPC",
        (libc::SIGILL, 6) => "ILL_PRVREG",
        (libc::SIGILL, 7) => "ILL_COPROC",
        (libc::SIGILL, 8) => "ILL_BADSTK",
        (libc::SIGFPE, 1) => "FPE_INTDIV",
        (libc::SIGFPE, 2) => "FPE_INTOVF",
        (libc::SIGFPE, 3) => "FPE_FLTDIV",
        (libc::SIGFPE, 4) => "FPE_FLTOVF",
        (libc::SIGFPE, 5) => "FPE_FLTUND",
        (libc::SIGFPE, 6) => "FPE_FLTRES",
        (libc::SIGFPE, 7) => "FPE_FLTINV",
        (libc::SIGFPE, 8) => "FPE_FLTSUB",
        (libc::SIGTRAP, 1) => "TRAP_BRKPT",
        (libc::SIGTRAP, 2) => "TRAP_TRACE",
        _ => return None,
    };
    Some(name)
}

/// The executable and the shared objects loaded now, with their build ids (read from
/// their program headers in memory: no file is opened).
pub(crate) fn loaded_modules() -> Vec<Module> {
    unsafe extern "C" fn each(
        info: *mut libc::dl_phdr_info,
        _size: usize,
        data: *mut c_void,
    ) -> c_int {
        // SAFETY: `data` is the `Vec` passed below; `info` and its program headers are
        // the loader's, valid during this callback.
        unsafe {
            let modules = &mut *data.cast::<Vec<Module>>();
            let info = &*info;
            let base = info.dlpi_addr;
            let name = if info.dlpi_name.is_null() {
                String::new()
            } else {
                CStr::from_ptr(info.dlpi_name)
                    .to_string_lossy()
                    .into_owned()
            };
            let phdrs = if info.dlpi_phdr.is_null() {
                &[][..]
            } else {
                std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum))
            };
            let mut start = u64::MAX;
            let mut end = 0;
            let mut build_id = None;
            for ph in phdrs {
                if ph.p_type == libc::PT_LOAD && ph.p_flags & libc::PF_X != 0 {
                    start = start.min(base + ph.p_vaddr);
                    end = end.max(base + ph.p_vaddr + ph.p_memsz);
                } else if ph.p_type == libc::PT_NOTE && build_id.is_none() {
                    let notes = std::slice::from_raw_parts(
                        (base + ph.p_vaddr) as *const u8,
                        ph.p_memsz as usize,
                    );
                    build_id = gnu_build_id(notes);
                }
            }
            if start < end {
                // The executable comes first, with an empty name.
                let path = if name.is_empty() && modules.is_empty() {
                    std::env::current_exe()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default()
                } else {
                    name
                };
                modules.push(Module {
                    path,
                    base,
                    start,
                    end,
                    build_id,
                });
            }
        }
        0
    }
    let mut modules: Vec<Module> = Vec::new();
    // SAFETY: `each` only reads what the loader hands it and pushes to `modules`.
    unsafe { libc::dl_iterate_phdr(Some(each), (&raw mut modules).cast::<c_void>()) };
    modules
}

/// The `NT_GNU_BUILD_ID` note among ELF notes, as hex.
fn gnu_build_id(mut notes: &[u8]) -> Option<String> {
    const NT_GNU_BUILD_ID: u32 = 3;
    let align4 = |n: usize| n.div_ceil(4) * 4;
    while notes.len() >= 12 {
        let word =
            |i: usize| u32::from_ne_bytes([notes[i], notes[i + 1], notes[i + 2], notes[i + 3]]);
        let (namesz, descsz, ty) = (word(0) as usize, word(4) as usize, word(8));
        let name_end = 12 + align4(namesz);
        let desc_end = name_end + align4(descsz);
        if desc_end > notes.len() {
            return None;
        }
        if ty == NT_GNU_BUILD_ID && notes[12..12 + namesz] == *b"GNU\0" {
            let desc = &notes[name_end..name_end + descsz];
            return Some(desc.iter().map(|b| format!("{b:02x}")).collect());
        }
        notes = &notes[desc_end..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::InApp;

    fn frame(function: &str) -> Frame {
        Frame {
            function: Some(function.to_owned()),
            instruction_addr: "0x1".to_owned(),
            ..Frame::default()
        }
    }

    #[test]
    fn classes_and_titles() {
        let sp = 0x7fff_0000_0000;
        let overflow = CrashRecord::for_test(libc::SIGSEGV, 2, sp - 8, sp, &[1]);
        let (ty, value) = classify(&overflow, &[], "deep", "SIGSEGV", Some("SEGV_ACCERR"));
        assert_eq!(ty, "stack overflow");
        assert!(
            value.starts_with("thread 'deep' overflowed its stack"),
            "{value}"
        );

        let null = CrashRecord::for_test(libc::SIGSEGV, 1, 0, sp, &[1]);
        let (ty, value) = classify(&null, &[], "main", "SIGSEGV", Some("SEGV_MAPERR"));
        assert_eq!(ty, "SIGSEGV");
        assert_eq!(
            value,
            "invalid memory access at 0x0 on thread 'main' (SIGSEGV (SEGV_MAPERR))"
        );

        let abort = CrashRecord::for_test(libc::SIGABRT, -6, 0, sp, &[1]);
        let oom = [
            frame("std::process::abort"),
            frame("alloc::alloc::handle_alloc_error"),
        ];
        assert_eq!(
            classify(&abort, &oom, "t", "SIGABRT", None).0,
            "out of memory"
        );
        assert_eq!(classify(&abort, &oom[..1], "t", "SIGABRT", None).0, "abort");
    }

    #[test]
    fn a_records_domain_name_is_cut_on_a_character_boundary() {
        let rec = CrashRecord::for_test(libc::SIGSEGV, 1, 0, 0, &[1]);
        assert_eq!(rec.domain(), None);
        let name = format!("a{}", "é".repeat(40));
        let rec = rec.with_domain(7, name.as_bytes());
        let (id, cut) = rec.domain().expect("a domain");
        assert_eq!(id, 7);
        assert_eq!(cut, &name[..63], "64 bytes end inside an `é`");
    }

    #[test]
    fn this_binary_has_a_build_id_and_relocates_onto_itself() {
        let modules = loaded_modules();
        let exe = &modules[0];
        assert!(exe.build_id.is_some(), "{modules:#?}");
        assert!(exe.start < exe.end);
        let ip = exe.start + 16;
        assert_eq!(relocate(ip, &modules, &modules), Some(ip));
        let mut moved = exe.clone();
        moved.base += 0x1000;
        moved.start += 0x1000;
        moved.end += 0x1000;
        assert_eq!(relocate(ip + 0x1000, &[moved.clone()], &modules), Some(ip));
        moved.build_id = Some("00".to_owned());
        assert_eq!(
            relocate(ip + 0x1000, &[moved], &modules),
            None,
            "another binary"
        );
    }

    #[inline(never)]
    fn here() -> u64 {
        let mut ip = 0;
        // SAFETY: the callback stores an integer.
        unsafe {
            backtrace::trace_unsynchronized(|f| {
                ip = f.ip() as u64;
                false
            });
        }
        ip
    }

    #[test]
    fn frames_are_resolved_from_the_interrupted_instruction_outwards() {
        let ip = here();
        let modules = loaded_modules();
        let mut rec = CrashRecord::for_test(libc::SIGSEGV, 1, 0, 0, &[0xdead, ip]);
        rec.pc = ip;
        let mut resolver = Resolver::new(InApp::default(), crate::trace::RawTrace::default());
        let (frames, symbolicated) = frames_of(&rec, &modules, &modules, &mut resolver);
        assert!(symbolicated);
        assert!(
            frames
                .iter()
                .all(|f| f.instruction_addr == format!("{ip:#x}")),
            "the handler's frame above pc is dropped: {frames:#?}"
        );
        assert!(
            frames
                .iter()
                .any(|f| f.function.as_deref().is_some_and(|n| n.contains("trace")))
        );
        let (frames, symbolicated) = frames_of(&rec, &[], &modules, &mut resolver);
        assert!(!symbolicated);
        assert_eq!(frames.len(), 1);
        assert!(frames[0].function.is_none());
    }

    #[test]
    fn notes_are_parsed() {
        let mut notes = Vec::new();
        notes.extend(4u32.to_ne_bytes());
        notes.extend(3u32.to_ne_bytes());
        notes.extend(1u32.to_ne_bytes());
        notes.extend(*b"ABC\0");
        notes.extend([1, 2, 3, 0]);
        notes.extend(4u32.to_ne_bytes());
        notes.extend(2u32.to_ne_bytes());
        notes.extend(3u32.to_ne_bytes());
        notes.extend(*b"GNU\0");
        notes.extend([0xab, 0xcd, 0, 0]);
        assert_eq!(gnu_build_id(&notes).as_deref(), Some("abcd"));
        assert_eq!(gnu_build_id(&notes[..20]), None);
    }
}
