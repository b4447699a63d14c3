//! Fatal signals: handlers for SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT and SIGTRAP that
//! write a small crash record to this run's file, then let the process die as it would have.
//!
//! The handler does only async-signal-safe work on memory reserved before any signal: it
//! fills a static [`CrashRecord`] (signal, code, fault address, registers, thread id and
//! name, the raw instruction pointers of the crashing thread), `write(2)`s it after the run
//! header [`install`] wrote at `init`, puts the previous handlers back and returns (a fault
//! re-executes and now meets the previous handler: Rust's own stack-overflow message still
//! prints) or re-raises the signal (`abort`, `kill`), so the exit status, the core dump and
//! `$?` are those of a process without the agent. Everything else (symbols, the event, the
//! outbox) happens at the next start, in `crash_report`.
//!
//! Why not a crate: `crash-handler` (EmbarkStudios) does the install/restore/re-raise
//! dance, but it takes a `parking_lot` lock inside the handler and sets up an alternate
//! signal stack only on the thread that attaches it; `nix` wraps `sigaction` with nothing
//! `libc` lacks for this, and has no `sigaltstack`. So: `libc`, in this one file.

#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
mod imp {
    use std::cell::UnsafeCell;
    use std::ffi::{c_int, c_void};
    use std::mem::MaybeUninit;
    use std::os::fd::IntoRawFd as _;
    use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};

    use crate::shared::Shared;

    /// At most this many instruction pointers are recorded.
    pub(crate) const MAX_FRAMES: usize = 128;
    /// Bytes of the current domain's name a record keeps.
    pub(crate) const DOMAIN_NAME_LEN: usize = 64;
    const MAGIC: [u8; 8] = *b"ESCRASH2";
    const SIGNALS: [c_int; 6] = [
        libc::SIGSEGV,
        libc::SIGBUS,
        libc::SIGILL,
        libc::SIGFPE,
        libc::SIGABRT,
        libc::SIGTRAP,
    ];
    /// The alternate signal stack `install` gives the calling thread when it has none or
    /// a small one (std gives its threads `SIGSTKSZ`, 8 KiB on x86_64).
    const ALTSTACK_SIZE: usize = 64 * 1024;
    /// How long a second crashing thread waits for the first one's record.
    const WAIT_FOR_OTHER_NS: u64 = 2_000_000_000;

    /// What the handler writes: plain integers, no pointers to follow, no padding (every
    /// field is 8-byte aligned or paired), so any bytes of the right length are a value.
    #[repr(C)]
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct CrashRecord {
        magic: [u8; 8],
        pub(crate) signal: i32,
        /// `si_code`: `SEGV_MAPERR`, `SI_TKILL`, ...
        pub(crate) code: i32,
        /// `si_addr` for faults (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGTRAP from the kernel).
        pub(crate) fault_addr: u64,
        /// The interrupted instruction and stack pointers.
        pub(crate) pc: u64,
        pub(crate) sp: u64,
        pub(crate) tid: i32,
        /// 1 when the thread was already panicking: the abort of a `panic = "abort"`
        /// build, whose panic the hook has recorded.
        pub(crate) panicking: i32,
        pub(crate) time_sec: i64,
        pub(crate) time_nsec: i64,
        /// The kernel's name of the thread (15 bytes at most, NUL-padded); `main` for the
        /// main thread.
        pub(crate) thread_name: [u8; 16],
        /// The id of the domain current on the crashing thread (0: none), and its name
        /// (cut at `DOMAIN_NAME_LEN` bytes, NUL-padded).
        pub(crate) domain_id: u64,
        domain_name: [u8; DOMAIN_NAME_LEN],
        frame_count: u32,
        _pad: u32,
        /// Instruction pointers from inside the handler outwards, through the signal
        /// frame, to the thread's start.
        frames: [u64; MAX_FRAMES],
    }

    impl CrashRecord {
        const EMPTY: Self = Self {
            magic: [0; 8],
            signal: 0,
            code: 0,
            fault_addr: 0,
            pc: 0,
            sp: 0,
            tid: 0,
            panicking: 0,
            time_sec: 0,
            time_nsec: 0,
            thread_name: [0; 16],
            domain_id: 0,
            domain_name: [0; DOMAIN_NAME_LEN],
            frame_count: 0,
            _pad: 0,
            frames: [0; MAX_FRAMES],
        };

        pub(crate) const SIZE: usize = size_of::<Self>();

        /// A record read back from a run file, if these bytes hold one.
        pub(crate) fn from_bytes(bytes: &[u8]) -> Option<Self> {
            if bytes.len() < Self::SIZE {
                return None;
            }
            // SAFETY: `CrashRecord` is `repr(C)` of integers and integer arrays: every bit
            // pattern of `SIZE` bytes is a valid value, and `read_unaligned` needs no
            // alignment.
            let rec = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Self>()) };
            (rec.magic == MAGIC && rec.frame_count as usize <= MAX_FRAMES).then_some(rec)
        }

        /// The recorded instruction pointers, innermost first.
        pub(crate) fn frames(&self) -> &[u64] {
            &self.frames[..(self.frame_count as usize).min(MAX_FRAMES)]
        }

        pub(crate) fn thread_name(&self) -> Option<&str> {
            let end = self.thread_name.iter().position(|&b| b == 0).unwrap_or(16);
            std::str::from_utf8(&self.thread_name[..end])
                .ok()
                .filter(|s| !s.is_empty())
        }

        /// The crashing thread's domain: its id and name (a name cut inside a character
        /// ends before it).
        pub(crate) fn domain(&self) -> Option<(u64, &str)> {
            if self.domain_id == 0 {
                return None;
            }
            let end = self
                .domain_name
                .iter()
                .position(|&b| b == 0)
                .unwrap_or(DOMAIN_NAME_LEN);
            let bytes = &self.domain_name[..end];
            let name = match std::str::from_utf8(bytes) {
                Ok(name) => name,
                // Cut inside a character: the part before it.
                Err(e) => std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default(),
            };
            Some((self.domain_id, name))
        }

        #[cfg(test)]
        pub(crate) fn with_domain(mut self, id: u64, name: &[u8]) -> Self {
            self.domain_id = id;
            let n = name.len().min(DOMAIN_NAME_LEN);
            self.domain_name[..n].copy_from_slice(&name[..n]);
            self
        }

        #[cfg(test)]
        pub(crate) fn for_test(
            signal: i32,
            code: i32,
            fault_addr: u64,
            sp: u64,
            frames: &[u64],
        ) -> Self {
            let mut rec = Self::EMPTY;
            rec.magic = MAGIC;
            rec.signal = signal;
            rec.code = code;
            rec.fault_addr = fault_addr;
            rec.sp = sp;
            rec.pc = frames.first().copied().unwrap_or(0);
            rec.thread_name[..4].copy_from_slice(b"test");
            rec.frame_count = frames.len() as u32;
            rec.frames[..frames.len()].copy_from_slice(frames);
            rec
        }
    }

    /// Memory the handler writes into, reserved before any signal can arrive.
    struct Reserved<T>(UnsafeCell<T>);

    // SAFETY: only the one thread that wins `HANDLING` touches `RECORD` after `install`,
    // and `PREVIOUS` is written by `install` before the handlers that read it exist.
    unsafe impl<T> Sync for Reserved<T> {}

    static RECORD: Reserved<CrashRecord> = Reserved(UnsafeCell::new(CrashRecord::EMPTY));
    static PREVIOUS: Reserved<[MaybeUninit<libc::sigaction>; SIGNALS.len()]> = Reserved(
        UnsafeCell::new([const { MaybeUninit::uninit() }; SIGNALS.len()]),
    );
    /// This run's file (opened at `init`, never closed) and where its record goes.
    static FD: AtomicI32 = AtomicI32::new(-1);
    static OFFSET: AtomicU64 = AtomicU64::new(0);
    /// The process that installed the handlers: a forked child does not record into its
    /// parent's file.
    static PID: AtomicI32 = AtomicI32::new(0);
    static INSTALLED: AtomicBool = AtomicBool::new(false);
    /// The thread id of the thread writing the record (0: none yet), and whether it is done.
    static HANDLING: AtomicI32 = AtomicI32::new(0);
    static DONE: AtomicBool = AtomicBool::new(false);

    /// Opens this run's file with `run_file` (which writes its header) and installs the
    /// handlers, once per process. Without a run file (the outbox's directory is
    /// unusable: the outbox says so) nothing is installed.
    pub(crate) fn install(
        shared: &Shared,
        run_file: impl FnOnce() -> Option<(std::fs::File, u64)>,
    ) {
        if !shared.options.catch_signals || INSTALLED.swap(true, Ordering::AcqRel) {
            return;
        }
        let Some((file, offset)) = run_file() else {
            INSTALLED.store(false, Ordering::Release);
            return;
        };
        FD.store(file.into_raw_fd(), Ordering::Release);
        OFFSET.store(offset, Ordering::Release);
        // SAFETY: getpid(2) has no preconditions.
        PID.store(unsafe { libc::getpid() }, Ordering::Release);
        // The first walk initializes the unwinder (libgcc sets up its register table under
        // `pthread_once`, not something to do inside a handler); it is cheap.
        // SAFETY: see `record`: the unwinder is thread-safe on Unix and the callback
        // does not unwind.
        unsafe { backtrace::trace_unsynchronized(|_| false) };
        ensure_altstack();
        for (i, &sig) in SIGNALS.iter().enumerate() {
            // SAFETY: `PREVIOUS` is not read before our handler for `sig` is installed
            // below; `sigaction` writes a whole `struct sigaction` into the slot.
            unsafe {
                let slot = (*PREVIOUS.0.get())[i].as_mut_ptr();
                if libc::sigaction(sig, std::ptr::null(), slot) != 0 {
                    continue;
                }
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = handle as *const () as usize;
                action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
                libc::sigemptyset(&raw mut action.sa_mask);
                libc::sigaction(sig, &action, std::ptr::null_mut());
            }
        }
    }

    /// Gives the calling thread (the one calling `init`, usually main) an alternate
    /// signal stack of `ALTSTACK_SIZE` with a guard page, unless it has one that large:
    /// a handler for a stack overflow cannot run on the overflowed stack. Threads spawned
    /// by std have std's own (see README: "Deaths that are not panics"). Never freed: a
    /// thread's alternate stack must outlive it, and this is one per process.
    fn ensure_altstack() {
        // SAFETY: plain syscalls on memory this function owns; `sigaltstack` with a null
        // new stack only reads the current one. On failure nothing changes.
        unsafe {
            let mut old: libc::stack_t = std::mem::zeroed();
            if libc::sigaltstack(std::ptr::null(), &mut old) != 0 {
                return;
            }
            if old.ss_flags & libc::SS_ONSTACK != 0
                || (old.ss_flags & libc::SS_DISABLE == 0 && old.ss_size >= ALTSTACK_SIZE)
            {
                return;
            }
            let page = usize::try_from(libc::sysconf(libc::_SC_PAGESIZE)).unwrap_or(4096);
            let len = ALTSTACK_SIZE + page;
            let mem = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            );
            if mem == libc::MAP_FAILED {
                return;
            }
            // The lowest page guards against the handler itself overflowing.
            libc::mprotect(mem, page, libc::PROT_NONE);
            let stack = libc::stack_t {
                ss_sp: mem.cast::<u8>().add(page).cast::<c_void>(),
                ss_flags: 0,
                ss_size: ALTSTACK_SIZE,
            };
            if libc::sigaltstack(&stack, std::ptr::null_mut()) != 0 {
                libc::munmap(mem, len);
            }
        }
    }

    /// The handler. Everything it calls is async-signal-safe: syscalls (`gettid`,
    /// `getpid`, `prctl`, `clock_gettime`, `pwrite`, `nanosleep`, `sigaction`, `tgkill`),
    /// plain stores to `RECORD`, atomics, and the stack walk (see `record`).
    extern "C" fn handle(sig: c_int, info: *mut libc::siginfo_t, ctx: *mut c_void) {
        // SAFETY: `__errno_location` returns this thread's errno; the interrupted code
        // gets back the value it had.
        let errno = unsafe { *libc::__errno_location() };
        // SAFETY: gettid(2) and getpid(2) have no preconditions.
        let (tid, pid) = unsafe { (libc::gettid(), libc::getpid()) };
        match HANDLING.compare_exchange(0, tid, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {
                if pid == PID.load(Ordering::Acquire) {
                    // SAFETY: this thread won `HANDLING`, so it alone writes `RECORD`;
                    // `info` and `ctx` are the kernel's, valid for this call (SA_SIGINFO).
                    unsafe { record(sig, info, ctx, tid) };
                }
                DONE.store(true, Ordering::Release);
            }
            // A fault inside this handler: give up the record, die as we would have.
            Err(owner) if owner == tid => {}
            // Another thread is crashing too: let it finish its record (bounded), then
            // this one dies the ordinary way as well.
            Err(_) => {
                let step = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 1_000_000,
                };
                let mut waited = 0;
                while !DONE.load(Ordering::Acquire) && waited < WAIT_FOR_OTHER_NS {
                    // SAFETY: nanosleep(2) with a valid timespec.
                    unsafe { libc::nanosleep(&step, std::ptr::null_mut()) };
                    waited += 1_000_000;
                }
            }
        }
        // SAFETY: `info` is the kernel's siginfo for this signal.
        let code = unsafe { (*info).si_code };
        restore_previous();
        // A fault returns to the faulting instruction, which faults again and now meets
        // the previous handler (Rust's stack-overflow handler, or the default action with
        // its core dump). A signal that was sent (`abort`, `kill`, `raise`) or a trap
        // that does not repeat is sent again: it stays pending while this handler runs
        // and is delivered to the previous disposition when it returns.
        if code <= 0 || sig == libc::SIGABRT || sig == libc::SIGTRAP {
            // SAFETY: tgkill(2) to this very thread.
            unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, sig) };
        }
        // SAFETY: see above.
        unsafe { *libc::__errno_location() = errno };
    }

    /// Puts back the dispositions found at `install`, for every signal: the process is
    /// going down, and what it meets on the way (Rust's stack-overflow handler aborts)
    /// must not be recorded twice.
    fn restore_previous() {
        for (i, &sig) in SIGNALS.iter().enumerate() {
            // SAFETY: `install` filled each slot before installing the handler that
            // runs this; sigaction(2) is async-signal-safe.
            unsafe {
                let previous = (*PREVIOUS.0.get())[i].as_ptr();
                libc::sigaction(sig, previous, std::ptr::null_mut());
            }
        }
    }

    /// Fills `RECORD` and writes it after the run header, twice: once before the stack
    /// walk (should the walk fault, the signal, thread and address are on disk) and once
    /// with the frames.
    ///
    /// # Safety
    ///
    /// Only the thread that won `HANDLING`, with the kernel's `info` and `ctx`.
    unsafe fn record(sig: c_int, info: *mut libc::siginfo_t, ctx: *mut c_void, tid: i32) {
        // SAFETY: the caller is the only writer of `RECORD` (it won `HANDLING`).
        let rec = unsafe { &mut *RECORD.0.get() };
        rec.magic = MAGIC;
        rec.signal = sig;
        rec.tid = tid;
        // SAFETY: `info` is the kernel's siginfo; `si_addr` is meaningful for faults.
        unsafe {
            rec.code = (*info).si_code;
            let fault = matches!(
                sig,
                libc::SIGSEGV | libc::SIGBUS | libc::SIGILL | libc::SIGFPE | libc::SIGTRAP
            ) && rec.code > 0;
            rec.fault_addr = if fault { (*info).si_addr() as u64 } else { 0 };
        }
        // SAFETY: `ctx` is the kernel's `ucontext_t` for this signal (SA_SIGINFO).
        let (pc, sp) = unsafe { registers(ctx) };
        rec.pc = pc;
        rec.sp = sp;
        // Reads an atomic (and, when some thread panicked, a const-initialized
        // thread-local `Cell` without destructor): no allocation, no lock.
        rec.panicking = i32::from(std::thread::panicking());
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime(2) into a local; prctl(PR_GET_NAME) writes at most 16
        // bytes (NUL included) into the 16-byte buffer.
        unsafe {
            libc::clock_gettime(libc::CLOCK_REALTIME, &mut now);
            rec.thread_name = [0; 16];
            if tid == libc::getpid() {
                rec.thread_name[..4].copy_from_slice(b"main");
            } else {
                libc::prctl(libc::PR_GET_NAME, rec.thread_name.as_mut_ptr(), 0, 0, 0);
            }
        }
        rec.time_sec = now.tv_sec;
        rec.time_nsec = now.tv_nsec;
        // A load from a const-initialized thread-local and a copy of bytes fixed when the
        // domain was made (see `domain::signal_safe_current`): no allocation, no lock.
        rec.domain_name = [0; DOMAIN_NAME_LEN];
        rec.domain_id = crate::domain::signal_safe_current(&mut rec.domain_name);
        rec.frame_count = 0;
        write_record(rec);
        let mut count = 0usize;
        let frames = &mut rec.frames;
        // SAFETY: `trace_unsynchronized` walks this thread's stack with libgcc's
        // `_Unwind_Backtrace` (the unwinder Rust itself uses): it allocates nothing, and
        // it steps through the signal frame into the interrupted code by the kernel's
        // trampoline's unwind info. It finds each return address's unwind tables through
        // `_dl_find_object` (glibc 2.35+, libgcc 12+), which is async-signal-safe and
        // lock-free; with an older glibc or libgcc it goes through `dl_iterate_phdr`,
        // which takes the loader's lock, so a crash inside `dlopen` could hang here
        // instead of dying. A corrupted stack can make it read a bad address: that faults
        // inside this handler and the process dies by that signal, with the record's
        // first half already written. `install` ran it once so that its lazy set-up is
        // done. The callback only stores integers.
        unsafe {
            backtrace::trace_unsynchronized(|frame| {
                let ip = frame.ip() as u64;
                if ip != 0 {
                    frames[count] = ip;
                    count += 1;
                }
                count < MAX_FRAMES
            });
        }
        rec.frame_count = count as u32;
        write_record(rec);
    }

    /// `pwrite(2)`s the record at its place after the run header.
    fn write_record(rec: &CrashRecord) {
        let fd = FD.load(Ordering::Acquire);
        let offset = OFFSET.load(Ordering::Acquire);
        let bytes = std::ptr::from_ref(rec).cast::<u8>();
        let mut done = 0usize;
        while done < CrashRecord::SIZE {
            // SAFETY: pwrite(2) from the record's own bytes (all initialized: no padding).
            let n = unsafe {
                libc::pwrite(
                    fd,
                    bytes.add(done).cast::<c_void>(),
                    CrashRecord::SIZE - done,
                    (offset + done as u64) as libc::off_t,
                )
            };
            if n <= 0 {
                // SAFETY: reading errno.
                if n < 0 && unsafe { *libc::__errno_location() } == libc::EINTR {
                    continue;
                }
                return;
            }
            done += n as usize;
        }
    }

    /// The interrupted instruction and stack pointers.
    ///
    /// # Safety
    ///
    /// `ctx` is the `ucontext_t` the kernel passed to an SA_SIGINFO handler.
    #[cfg(target_arch = "x86_64")]
    unsafe fn registers(ctx: *mut c_void) -> (u64, u64) {
        // SAFETY: per the contract, a valid `ucontext_t`.
        let gregs = unsafe { &(*ctx.cast::<libc::ucontext_t>()).uc_mcontext.gregs };
        (
            gregs[libc::REG_RIP as usize] as u64,
            gregs[libc::REG_RSP as usize] as u64,
        )
    }

    /// The interrupted instruction and stack pointers.
    ///
    /// # Safety
    ///
    /// `ctx` is the `ucontext_t` the kernel passed to an SA_SIGINFO handler.
    #[cfg(target_arch = "aarch64")]
    unsafe fn registers(ctx: *mut c_void) -> (u64, u64) {
        // SAFETY: per the contract, a valid `ucontext_t`.
        let mc = unsafe { &(*ctx.cast::<libc::ucontext_t>()).uc_mcontext };
        (mc.pc, mc.sp)
    }
}

#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
pub(crate) use imp::{CrashRecord, install};

/// Elsewhere fatal signals are not recorded: what stands in for `crash_report` there.
#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
pub(crate) mod elsewhere {
    /// Installs nothing.
    pub(crate) fn install(_shared: &crate::shared::Shared) {}

    /// Delivers nothing.
    pub(crate) fn deliver(
        _shared: &crate::shared::Shared,
        _resolver: &mut crate::trace::Resolver,
        _os: &serde_json::Value,
        _commit: impl FnOnce(Vec<crate::store::Row>) -> bool,
    ) {
    }
}
