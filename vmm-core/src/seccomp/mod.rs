//! Per-thread seccomp filters (rust-vmm's `seccompiler`).
//!
//! Every thread of the VMM process gets a BPF filter for its kind ([`ThreadKind`]) before it
//! touches guest data: the vCPU threads before their first `KVM_RUN`, the API thread before it
//! accepts a request, the event loop before it serves a device, the main thread once the VM
//! runs. A syscall outside a thread's list traps: a SIGSYS handler writes one line to stderr
//! (the syscall number and the thread) and the process dies by SIGSYS.
//!
//! The choice is process-wide: [`install`] is called once, before any VM thread starts (the
//! `vmm` and `firecracker` front ends always call it; a library user that never calls it gets
//! no filters). The built-in lists are in `filters.rs`, one table per thread kind.

mod filters;

use crate::thread_names;
use std::cell::Cell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use seccompiler::{BpfMap, BpfProgram, TargetArch};

/// Which seccomp filters the VMM's threads get.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SeccompConfig {
    /// The built-in filters (the front ends' default).
    #[default]
    Default,
    /// No filters (`--no-seccomp`).
    Disabled,
    /// Filters compiled from a file in seccompiler's JSON format (`--seccomp-filter FILE`),
    /// one filter per thread kind, keyed by [`ThreadKind::key`]: "vmm", "api" and "vcpu" (as
    /// in Firecracker's filter files) are required; "events", "signals" and "metrics" are
    /// optional and default to the "vmm" filter (in Firecracker those threads' work runs on
    /// its vmm thread).
    File(PathBuf),
}

/// The kinds of thread of a `vmm` process; each has its own filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ThreadKind {
    /// The main thread: the control loop (API requests, snapshots, drive updates, shutdown).
    Vmm,
    /// The API socket's thread (`fc_api`).
    Api,
    /// A vCPU thread (`fc_vcpu N`).
    Vcpu,
    /// The event loop (`vmm-events`): device queues, taps, vsock sockets, block I/O, timers.
    Events,
    /// The signal forwarder (`vmm-signals`).
    Signals,
    /// The periodic metrics writer (`vmm-metrics`).
    Metrics,
}

impl ThreadKind {
    /// Every kind, in the order of the docs.
    pub const ALL: [ThreadKind; 6] = [
        ThreadKind::Vmm,
        ThreadKind::Api,
        ThreadKind::Vcpu,
        ThreadKind::Events,
        ThreadKind::Signals,
        ThreadKind::Metrics,
    ];

    /// The kind's key in a JSON filter file.
    pub fn key(self) -> &'static str {
        match self {
            ThreadKind::Vmm => "vmm",
            ThreadKind::Api => "api",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Events => "events",
            ThreadKind::Signals => "signals",
            ThreadKind::Metrics => "metrics",
        }
    }

    /// The kind a thread named `name` has, for threads started by [`crate`]'s
    /// `StoppableThread` (which know only their name).
    pub(crate) fn of_thread_name(name: &str) -> Option<ThreadKind> {
        match name {
            thread_names::API => Some(ThreadKind::Api),
            thread_names::SIGNALS => Some(ThreadKind::Signals),
            thread_names::METRICS => Some(ThreadKind::Metrics),
            thread_names::EVENTS => Some(ThreadKind::Events),
            _ => None,
        }
    }
}

/// Why the filters could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The filter file could not be read.
    #[error("cannot read the seccomp filter file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// seccompiler refused the filters.
    #[error("cannot compile the seccomp filters{}", .path.as_ref().map(|p| format!(" of {}", p.display())).unwrap_or_default())]
    Compile {
        /// The file, for a custom filter.
        path: Option<PathBuf>,
        /// seccompiler's error.
        #[source]
        source: seccompiler::Error,
    },
    /// The filter file lacks a thread kind.
    #[error("the seccomp filter file {path} has no filter \"{key}\" (it needs vmm, api and vcpu)")]
    Missing {
        /// The file.
        path: PathBuf,
        /// The missing key.
        key: &'static str,
    },
    /// [`install`] was called twice with different settings.
    #[error("the seccomp filters were set up already")]
    AlreadyInstalled,
    /// The SIGSYS handler could not be installed.
    #[error("cannot install the SIGSYS handler")]
    Handler(#[source] std::io::Error),
}

/// The compiled filters, by kind; `None` when filtering is off.
static FILTERS: OnceLock<Option<HashMap<ThreadKind, BpfProgram>>> = OnceLock::new();

/// Sets the process's filters: compiles them (the built-in ones, or `config`'s file) and
/// installs the SIGSYS handler. Call it once, on the main thread, before a VM starts; the
/// threads each apply their own filter as they start.
pub fn install(config: &SeccompConfig) -> Result<(), SeccompError> {
    let filters = match config {
        SeccompConfig::Disabled => None,
        SeccompConfig::Default => Some(built_in()?),
        SeccompConfig::File(path) => Some(from_file(path)?),
    };
    if filters.is_some() {
        install_sigsys_handler()?;
        warm_up();
    }
    #[cfg(feature = "seccomp-test-hooks")]
    let _ = TEST_VIOLATION.set(std::env::var("VMM_SECCOMP_TEST_VIOLATION").ok());
    FILTERS
        .set(filters)
        .map_err(|_| SeccompError::AlreadyInstalled)
}

/// Does once, before any filter, what libc would otherwise do lazily on a confined thread:
/// load the time zone (read from /etc/localtime by the first local-time log line).
fn warm_up() {
    let now: libc::time_t = 0;
    // SAFETY: an all-zero `tm` is a valid value of this plain C struct.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: localtime_r reads one time_t and writes one tm, both valid for the call.
    unsafe { libc::localtime_r(&now, &mut tm) };
}

/// The target architecture of this build.
fn arch() -> TargetArch {
    #[cfg(target_arch = "x86_64")]
    {
        TargetArch::x86_64
    }
    #[cfg(target_arch = "aarch64")]
    {
        TargetArch::aarch64
    }
}

/// The built-in filters, compiled.
pub fn built_in() -> Result<HashMap<ThreadKind, BpfProgram>, SeccompError> {
    ThreadKind::ALL
        .iter()
        .map(|&kind| {
            let program = filters::filter(kind, arch())
                .and_then(|f| BpfProgram::try_from(f).map_err(seccompiler::Error::Backend))
                .map_err(|source| SeccompError::Compile { path: None, source })?;
            Ok((kind, program))
        })
        .collect()
}

/// The filters of a seccompiler JSON file.
fn from_file(path: &Path) -> Result<HashMap<ThreadKind, BpfProgram>, SeccompError> {
    let file = std::fs::File::open(path).map_err(|source| SeccompError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut map: BpfMap = seccompiler::compile_from_json(std::io::BufReader::new(file), arch())
        .map_err(|source| SeccompError::Compile {
            path: Some(path.to_path_buf()),
            source,
        })?;
    let vmm = map.get(ThreadKind::Vmm.key()).cloned();
    ThreadKind::ALL
        .iter()
        .map(|&kind| {
            let optional = !matches!(kind, ThreadKind::Vmm | ThreadKind::Api | ThreadKind::Vcpu);
            match map.remove(kind.key()) {
                Some(program) => Ok((kind, program)),
                None if optional && vmm.is_some() => Ok((kind, vmm.clone().unwrap_or_default())),
                None => Err(SeccompError::Missing {
                    path: path.to_path_buf(),
                    key: kind.key(),
                }),
            }
        })
        .collect()
}

/// Applies `kind`'s filter to the calling thread (nothing when filtering is off or was never
/// set up). A thread that cannot be confined must not run on: the process ends.
pub(crate) fn apply(kind: ThreadKind) {
    let Some(Some(filters)) = FILTERS.get() else {
        return;
    };
    let Some(program) = filters.get(&kind) else {
        return;
    };
    set_thread_prefix(kind);
    if let Err(e) = seccompiler::apply_filter(program) {
        log::error!(
            "cannot apply the {} seccomp filter: {}",
            kind.key(),
            crate::error::chain(&e)
        );
        std::process::exit(1);
    }
    #[cfg(feature = "seccomp-test-hooks")]
    if TEST_VIOLATION.get().and_then(|v| v.as_deref()) == Some(kind.key()) {
        forbidden_syscall();
    }
}

/// Applies the filter of a `StoppableThread` called `name`, if its name has a kind.
pub(crate) fn apply_for_thread_name(name: &str) {
    if let Some(kind) = ThreadKind::of_thread_name(name) {
        apply(kind);
    }
}

/// The thread kind whose thread makes a forbidden syscall once filtered (tests only).
#[cfg(feature = "seccomp-test-hooks")]
static TEST_VIOLATION: OnceLock<Option<String>> = OnceLock::new();

/// A syscall no built-in filter allows and that harms nothing if a custom one does:
/// `socket(AF_INET6, SOCK_STREAM)` (the VMM has no IP sockets; the descriptor is closed).
fn forbidden_syscall() {
    // SAFETY: socket takes no pointers; a descriptor it returns is closed at once.
    let fd = unsafe { libc::syscall(libc::SYS_socket, libc::AF_INET6, libc::SOCK_STREAM, 0) };
    if fd >= 0 {
        // SAFETY: `fd` was just opened here and is owned by no one else.
        unsafe { libc::close(fd as libc::c_int) };
    }
}

/// The longest line the SIGSYS handler writes.
const LINE_MAX: usize = 160;

thread_local! {
    /// This thread's line for the SIGSYS handler, up to the syscall number, and its length:
    /// prepared when the filter is applied, so the handler only copies and writes.
    static PREFIX: Cell<([u8; LINE_MAX], usize)> = const { Cell::new(([0; LINE_MAX], 0)) };
}

fn set_thread_prefix(kind: ThreadKind) {
    let thread = std::thread::current();
    let text = format!(
        "vmm: seccomp: thread '{}' ({} filter) made forbidden syscall ",
        thread.name().unwrap_or("-"),
        kind.key()
    );
    let mut buf = [0u8; LINE_MAX];
    // Room is left for the number and the newline.
    let len = text.len().min(LINE_MAX - 24);
    buf[..len].copy_from_slice(&text.as_bytes()[..len]);
    PREFIX.with(|p| p.set((buf, len)));
}

fn install_sigsys_handler() -> Result<(), SeccompError> {
    // SAFETY: a zeroed sigaction is valid (no handler, empty mask, no flags) until set below.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_sigsys as *const () as libc::sighandler_t;
    action.sa_flags = libc::SA_SIGINFO;
    // SAFETY: `action` is fully set up and `on_sigsys` only makes async-signal-safe calls.
    let rc = unsafe { libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(SeccompError::Handler(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Writes the thread's line with the syscall number, then ends the process by SIGSYS. Only
/// async-signal-safe calls: write(2) of a buffer on the stack, and a syscall.
extern "C" fn on_sigsys(
    _signal: libc::c_int,
    info: *mut libc::siginfo_t,
    _context: *mut libc::c_void,
) {
    // SAFETY: for a seccomp SIGSYS the kernel fills siginfo's `_sigsys` member: after
    // si_signo, si_errno, si_code (and padding, 16 bytes) come `void *_call_addr` and
    // `int _syscall`, the int at index 6. `info` points to the kernel's full siginfo.
    let syscall = unsafe { *(info as *const i32).add(6) };
    let (mut line, mut len) = PREFIX.with(|p| p.get());
    if len == 0 {
        let text = b"vmm: seccomp: a thread made forbidden syscall ";
        line[..text.len()].copy_from_slice(text);
        len = text.len();
    }
    len += write_decimal(&mut line[len..], syscall);
    line[len] = b'\n';
    len += 1;
    // SAFETY: writes `len` initialized bytes of `line` to stderr; write(2) is async-signal-safe.
    unsafe { libc::write(2, line.as_ptr().cast(), len) };
    // SIGSYS is blocked while its handler runs, so the kernel answers a second forbidden
    // syscall by resetting SIGSYS to its default action: the process dies by SIGSYS (as
    // with SECCOMP_RET_KILL_PROCESS), and a parent sees that signal.
    forbidden_syscall();
    // A custom filter allowed it: exit with the status a shell gives a SIGSYS death.
    // SAFETY: _exit(2) ends the process at once; it is async-signal-safe.
    unsafe { libc::_exit(128 + libc::SIGSYS) };
}

/// Writes `value` in decimal into `out` (which has room), returning the length.
fn write_decimal(out: &mut [u8], value: i32) -> usize {
    let mut digits = [0u8; 12];
    let mut n = value.unsigned_abs();
    let mut count = 0;
    loop {
        digits[count] = b'0' + (n % 10) as u8;
        n /= 10;
        count += 1;
        if n == 0 {
            break;
        }
    }
    let mut len = 0;
    if value < 0 {
        out[0] = b'-';
        len = 1;
    }
    for i in (0..count).rev() {
        out[len] = digits[i];
        len += 1;
    }
    len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_built_in_filter_compiles() {
        let filters = built_in().unwrap();
        assert_eq!(filters.len(), ThreadKind::ALL.len());
        assert!(filters.values().all(|p| !p.is_empty()));
    }

    #[test]
    fn decimal() {
        let mut out = [0u8; 12];
        let n = write_decimal(&mut out, 41);
        assert_eq!(&out[..n], b"41");
        let n = write_decimal(&mut out, 0);
        assert_eq!(&out[..n], b"0");
        let n = write_decimal(&mut out, -7);
        assert_eq!(&out[..n], b"-7");
    }

    #[test]
    fn a_filter_file_needs_every_kind() {
        let dir = std::env::temp_dir().join(format!("vmm-seccomp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("f.json");
        let one = r#"{"mismatch_action": "trap", "match_action": "allow", "filter": [{"syscall": "read"}]}"#;
        std::fs::write(&file, format!(r#"{{"vmm": {one}}}"#)).unwrap();
        let err = from_file(&file).unwrap_err();
        assert!(
            matches!(err, SeccompError::Missing { key: "api", .. }),
            "{err}"
        );
        // Firecracker's three kinds are enough: the others take "vmm"'s.
        std::fs::write(
            &file,
            format!(r#"{{"vmm": {one}, "api": {one}, "vcpu": {one}}}"#),
        )
        .unwrap();
        assert_eq!(from_file(&file).unwrap().len(), 6);
        let all: Vec<String> = ThreadKind::ALL
            .iter()
            .map(|k| format!(r#""{}": {one}"#, k.key()))
            .collect();
        std::fs::write(&file, format!("{{{}}}", all.join(","))).unwrap();
        assert_eq!(from_file(&file).unwrap().len(), 6);
        std::fs::write(&file, "{\"vmm\": 1}").unwrap();
        assert!(matches!(
            from_file(&file).unwrap_err(),
            SeccompError::Compile { .. }
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
