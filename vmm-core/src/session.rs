//! [`Session`]: the control API's requests against one VM over its life, without a socket.
//! Before boot they change the configuration; `InstanceStart` (or `PUT /snapshot/load`) starts
//! the VM; after that they act on the running [`Vmm`]. The `vmm` process's API server takes the
//! same path (its main thread hands every request to [`Session::handle`] before boot and to
//! [`answer_running`] after), so an embedder or a fuzzer drives exactly what a client reaches.

use std::sync::mpsc::{channel, Receiver, RecvError, Sender};

use vmm_api::{ApiConfig, ApiRequest, ApiResponse, InstanceState};

use crate::builder::BuiltVm;
use crate::dispatch::{self, PreBoot};
use crate::error::{chain, Error, Result};
use crate::events::VmEvent;
use crate::vmm::{StartMode, Vmm};

/// One VM's control API: the configuration before boot, the running VM after.
///
/// Dropping it shuts the VM down (its threads stopped and joined, its devices, KVM VM and
/// memory released).
pub struct Session {
    phase: Phase,
}

enum Phase {
    /// Before boot: the configuration, and the channel the VM takes over when it starts (the
    /// API server may already hold a sender of it).
    Configuring {
        api: Box<ApiConfig>,
        events_tx: Sender<VmEvent>,
        events_rx: Receiver<VmEvent>,
    },
    /// The VM runs (or is paused).
    Running(Box<Vmm>),
    /// The VM ended on its own (the guest powered off, a vCPU failed) and was shut down, or
    /// could not start: why, and the error when it failed.
    Ended(String, Option<Error>),
    /// Only while a phase change is under way.
    Moving,
}

impl Session {
    /// A session that waits for configuration requests, starting from `api`.
    pub fn new(api: ApiConfig) -> Session {
        let (events_tx, events_rx) = channel();
        Session::with_events(api, events_tx, events_rx)
    }

    /// [`Session::new`] on a channel made earlier: the API server sends requests on it, and
    /// the VM takes it over when it starts.
    pub(crate) fn with_events(
        api: ApiConfig,
        events_tx: Sender<VmEvent>,
        events_rx: Receiver<VmEvent>,
    ) -> Session {
        Session {
            phase: Phase::Configuring {
                api: Box::new(api),
                events_tx,
                events_rx,
            },
        }
    }

    /// The configuration as the API shows it (`GET /vm/config`); `None` once the VM ended.
    pub fn config(&self) -> Option<&ApiConfig> {
        match &self.phase {
            Phase::Configuring { api, .. } => Some(&**api),
            Phase::Running(vmm) => Some(vmm.config()),
            Phase::Ended(..) | Phase::Moving => None,
        }
    }

    /// What `GET /` says: not started, running or paused; `None` once the VM ended.
    pub fn state(&self) -> Option<InstanceState> {
        match &self.phase {
            Phase::Configuring { .. } => Some(InstanceState::NotStarted),
            Phase::Running(vmm) => Some(vmm.state()),
            Phase::Ended(..) | Phase::Moving => None,
        }
    }

    /// Why the VM ended, once it did.
    pub fn ended(&mut self) -> Option<&str> {
        self.poll_end();
        match &self.phase {
            Phase::Ended(why, _) => Some(why),
            _ => None,
        }
    }

    /// Answers `request` as the API server would at this point of the VM's life, and counts it
    /// in the metrics. A request after the VM ended gets 503, as the server's does.
    pub fn handle(&mut self, request: ApiRequest) -> ApiResponse {
        self.poll_end();
        match &mut self.phase {
            Phase::Running(vmm) => answer_running(vmm, request),
            Phase::Ended(why, _) => ApiResponse::fault(503, &format!("the VM has ended: {why}")),
            Phase::Moving => ApiResponse::internal_error("the session is in an unknown phase"),
            Phase::Configuring { api, .. } => {
                let kind = request.clone();
                let started = std::time::Instant::now();
                let response = match dispatch::handle_pre_boot(api, request) {
                    PreBoot::Answer(response) => response,
                    PreBoot::Boot(built) => self.start(*built, StartMode::Running),
                    PreBoot::Restored(built, true) => {
                        self.start(*built, StartMode::PausedThenResumed)
                    }
                    PreBoot::Restored(built, false) => self.start(*built, StartMode::Paused),
                };
                crate::metrics::record_api_request(&kind, response.status, started.elapsed());
                response
            }
        }
    }

    /// Builds the configured VM and starts it running (a `vmm` given a kernel up front). An
    /// error in starting its threads comes out of [`Session::into_vmm`].
    pub(crate) fn boot(&mut self) -> Result<()> {
        let built = match &self.phase {
            Phase::Configuring { api, .. } => BuiltVm::build(&api.vm)?,
            _ => return Ok(()),
        };
        self.start(built, StartMode::Running);
        Ok(())
    }

    /// Starts `built` as `mode` says: 204, or 500 when its threads could not start (the
    /// session has ended then: the VM took its channel).
    fn start(&mut self, mut built: BuiltVm, mode: StartMode) -> ApiResponse {
        let Phase::Configuring {
            api,
            events_tx,
            events_rx,
        } = std::mem::replace(&mut self.phase, Phase::Moving)
        else {
            unreachable!("only a session being configured starts a VM");
        };
        // A restored VM knows its interfaces' ids from its state file; a booted one from the API.
        if built.iface_ids.is_empty() {
            built.iface_ids = api.iface_ids.clone();
        }
        match Vmm::start_with_events(built, mode, api.flavor, events_tx.clone(), events_rx) {
            Ok(vmm) => {
                self.phase = Phase::Running(Box::new(vmm));
                ApiResponse::no_content()
            }
            Err(e) => {
                let response = ApiResponse::internal_error(&chain(&e));
                self.phase = Phase::Ended(chain(&e), Some(e));
                response
            }
        }
    }

    /// The next event before boot (an API request, a signal); `None` once the VM started.
    pub(crate) fn next_pre_boot_event(&self) -> Option<std::result::Result<VmEvent, RecvError>> {
        match &self.phase {
            Phase::Configuring { events_rx, .. } => Some(events_rx.recv()),
            _ => None,
        }
    }

    /// The running VM, for the process's main loop ([`Vmm::wait_for_end`]); the error when it
    /// could not start.
    pub(crate) fn into_vmm(self) -> Result<Vmm> {
        let mut session = self;
        match std::mem::replace(&mut session.phase, Phase::Moving) {
            Phase::Running(vmm) => Ok(*vmm),
            Phase::Ended(_, Some(e)) => Err(e),
            _ => Err(Error::EventChannelLost),
        }
    }

    /// Notices a VM that ended on its own since the last request (the process's main loop does
    /// this in [`Vmm::wait_for_end`]) and shuts it down.
    fn poll_end(&mut self) {
        let Phase::Running(vmm) = &mut self.phase else {
            return;
        };
        let why = match vmm.poll_end(answer_running) {
            None => return,
            Some(Ok(reason)) => reason.to_string(),
            Some(Err(e)) => chain(&e),
        };
        if let Phase::Running(vmm) = std::mem::replace(&mut self.phase, Phase::Ended(why, None)) {
            vmm.shutdown();
        }
    }
}

/// The answer to `request` on a running VM, counted in the metrics.
pub(crate) fn answer_running(vmm: &mut Vmm, request: ApiRequest) -> ApiResponse {
    let kind = request.clone();
    let started = std::time::Instant::now();
    let response = dispatch::handle_running(vmm, request);
    crate::metrics::record_api_request(&kind, response.status, started.elapsed());
    response
}
