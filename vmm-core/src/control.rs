//! The main thread's control flow for the `vmm` process: boot a VM (at once, or after it was
//! configured over the API), or restore one, then run it to its end while the API is served.

use std::path::{Path, PathBuf};
use std::sync::mpsc::channel;

use vmm_api::{ApiConfig, Flavor, VmConfig, MAX_BODY_BYTES};

use crate::api_server::{ApiServer, DEFAULT_SOCKET_MODE};
use crate::builder::BuiltVm;
use crate::error::{Error, Result};
use crate::events::{ShutdownReason, SignalForwarder, VmEvent};
use crate::persist::RestoreSource;
use crate::session::{answer_running, Session};
use crate::vmm::{StartMode, Vmm};

/// Builds and runs the VM `config` describes, returning how it ended.
pub fn run_vm(config: &VmConfig) -> Result<ShutdownReason> {
    let built = BuiltVm::build(config)?;
    run_to_end(Vmm::start(built, StartMode::Running)?)
}

/// How the control API is served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiOptions {
    /// The Unix socket it listens on.
    pub socket: PathBuf,
    /// The largest request body taken, in bytes.
    pub max_body: usize,
    /// Who `GET /` and `GET /version` say this process is.
    pub flavor: Flavor,
    /// The socket file's permissions ([`DEFAULT_SOCKET_MODE`], 0600: its owner only). Whatever
    /// they are, only root and the VMM's own uid are served.
    pub socket_mode: u32,
}

impl ApiOptions {
    /// `vmm`'s API on `socket` with the default body limit and socket mode.
    pub fn new(socket: &Path) -> ApiOptions {
        ApiOptions {
            socket: socket.to_path_buf(),
            max_body: MAX_BODY_BYTES,
            flavor: Flavor::Vmm,
            socket_mode: DEFAULT_SOCKET_MODE,
        }
    }
}

/// Runs a VM with the control API on `api_sock`. With a kernel in `config` it boots at once;
/// otherwise it waits for configuration requests and `InstanceStart`, or a `PUT
/// /snapshot/load`.
pub fn run_with_api(config: VmConfig, api_sock: &Path) -> Result<ShutdownReason> {
    run_api_config(ApiConfig::new(config), &ApiOptions::new(api_sock))
}

/// [`run_with_api`] from a configuration made through the API's requests (which keeps the
/// interfaces' ids), with the API served as `options` say.
pub fn run_api_config(mut api: ApiConfig, options: &ApiOptions) -> Result<ShutdownReason> {
    let (events_tx, events_rx) = channel();
    let _server = ApiServer::start(
        &options.socket,
        events_tx.clone(),
        options.max_body,
        options.socket_mode,
    )?;
    api.flavor = options.flavor;
    let boot_at_once = api.vm.kernel.is_some();
    let mut session = Session::with_events(api, events_tx.clone(), events_rx);
    if boot_at_once {
        session.boot()?;
    } else {
        let signals = SignalForwarder::start(events_tx)
            .map_err(|e| Error::Thread(crate::thread_names::SIGNALS, e))?;
        let signal = wait_for_configuration(&mut session)?;
        // The running VM forwards signals on its own.
        drop(signals);
        if let Some(signal) = signal {
            crate::metrics::flush_at_exit();
            return Ok(ShutdownReason::Signal(signal));
        }
    }
    run_to_end(session.into_vmm()?)
}

/// Restores the snapshot `source` in this process and runs it (paused unless `resume`), with
/// the control API served as `api` says when given (its socket, body limit and socket mode;
/// not its flavor).
pub fn restore_vm(
    source: &RestoreSource,
    api: Option<&ApiOptions>,
    resume: bool,
) -> Result<ShutdownReason> {
    let (events_tx, events_rx) = channel();
    let _server = api
        .map(|options| {
            ApiServer::start(
                &options.socket,
                events_tx.clone(),
                options.max_body,
                options.socket_mode,
            )
        })
        .transpose()?;
    let built = match BuiltVm::restore(source) {
        Ok(built) => built,
        Err(e) => {
            // Before the API server is joined (it is dropped first): a request that came
            // during the restore is answered 503 instead of holding that join up.
            drop(events_rx);
            return Err(e);
        }
    };
    let mode = if resume {
        StartMode::PausedThenResumed
    } else {
        StartMode::Paused
    };
    run_to_end(Vmm::start_with_events(
        built,
        mode,
        Flavor::Vmm,
        events_tx,
        events_rx,
    )?)
}

/// Returns the free pages of the heap to the kernel. glibc's malloc keeps memory it got for
/// blocks since freed (it trims the top of the heap only past 128 KiB, and never the middle), so
/// the peak of setting a VM up would otherwise stay resident for the whole run. Runs once,
/// before the main thread's seccomp filter is applied (what it does, `brk` and
/// `madvise(MADV_DONTNEED)`, is allowed by every filter anyway, as any free may do it).
fn release_free_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim takes the allocator's own locks, so other threads may allocate
    // meanwhile; it only gives back pages of free blocks (madvise(MADV_DONTNEED) inside the heap,
    // brk below its top) and touches no live allocation. Its result (whether it released
    // anything) needs no handling.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Answers the API until the VM ends, then shuts it down.
fn run_to_end(mut vmm: Vmm) -> Result<ShutdownReason> {
    // Setting up freed most of what it allocated (the seccomp filters' compilation, the
    // configuration's parsing, the loader's buffers): hand those pages back now that it is done.
    release_free_heap();
    // Every other thread runs now; the main thread is confined for the rest of the process.
    crate::seccomp::apply(crate::seccomp::ThreadKind::Vmm);
    let outcome = vmm.wait_for_end(answer_running);
    let stopped_at = vmm.shutdown();
    // The last line: what happened since the previous one, however the VM ended.
    crate::metrics::flush_at_exit();
    if let Ok(ShutdownReason::Signal(_)) = outcome {
        // Where each vCPU was tells whether a stuck guest was idle or spinning.
        for (index, rip) in stopped_at {
            log::warn!("vCPU {index} stopped at RIP {rip:#x}");
        }
    }
    outcome
}

/// Answers requests before boot until one starts the VM (`None`) or a termination signal
/// comes (`Some(signal)`).
fn wait_for_configuration(session: &mut Session) -> Result<Option<i32>> {
    while let Some(event) = session.next_pre_boot_event() {
        match event {
            Ok(VmEvent::Api(request, reply)) => {
                let _ = reply.send(session.handle(*request));
            }
            Ok(VmEvent::Signal(signal)) => return Ok(Some(signal)),
            Ok(_) => {}
            Err(_) => return Err(Error::EventChannelLost),
        }
    }
    Ok(None)
}
