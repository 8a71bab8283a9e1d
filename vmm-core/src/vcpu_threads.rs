//! The vCPU threads: one per vCPU, each running its vCPU until the guest ends, a fatal exit, or
//! a kick. A kick either pauses the thread (it parks and waits for a command: resume, or hand
//! over state) or, when the VM is ending, makes it return its vCPU.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_vcpu::{Vcpu, VcpuExitReason, VcpuKicker, VcpuState};

use crate::error::{Error, Result};
use crate::events::VmEvent;
use crate::exits::BusExitHandler;

/// What a parked vCPU thread can be asked to do.
pub(crate) enum VcpuCommand {
    /// Run the guest again.
    Resume,
    /// Save the parked vCPU's state and send it back, then stay parked.
    SaveState(Sender<vmm_vcpu::Result<VcpuState>>),
    /// Return the vCPU: the VM is ending.
    Exit,
}

struct VcpuHandle {
    index: u8,
    kicker: VcpuKicker,
    commands: Sender<VcpuCommand>,
    thread: JoinHandle<Vcpu>,
}

/// The running vCPU threads.
pub(crate) struct VcpuThreads {
    handles: Vec<VcpuHandle>,
    /// Set before the final kick: a stopped vCPU then returns instead of parking.
    exiting: Arc<AtomicBool>,
    parked: Receiver<u8>,
    paused: bool,
}

/// Longest a pause waits for every vCPU to leave KVM_RUN.
pub(crate) const PAUSE_TIMEOUT: Duration = Duration::from_secs(2);

impl VcpuThreads {
    /// Starts one thread per vCPU. Ends of the VM (and errors) go to `events`.
    pub(crate) fn spawn(
        vcpus: Vec<Vcpu>,
        exits: Arc<BusExitHandler>,
        events: Sender<VmEvent>,
        start_paused: bool,
    ) -> Result<VcpuThreads> {
        let exiting = Arc::new(AtomicBool::new(false));
        let (parked_tx, parked) = channel();
        let mut threads = VcpuThreads {
            handles: Vec::with_capacity(vcpus.len()),
            exiting: exiting.clone(),
            parked,
            paused: false,
        };
        for vcpu in vcpus {
            let index = vcpu.index();
            let kicker = vcpu.kicker();
            if start_paused {
                // The first KVM_RUN returns at once and the thread parks.
                kicker.stop();
            }
            let (commands, command_rx) = channel();
            let thread = spawn_one(
                vcpu,
                exits.clone(),
                events.clone(),
                parked_tx.clone(),
                command_rx,
                exiting.clone(),
            );
            match thread {
                Ok(thread) => threads.handles.push(VcpuHandle {
                    index,
                    kicker,
                    commands,
                    thread,
                }),
                Err(e) => {
                    threads.stop();
                    return Err(e);
                }
            }
        }
        if start_paused {
            threads.paused = true;
            if let Err(e) = threads.wait_parked() {
                threads.stop();
                return Err(e);
            }
        }
        Ok(threads)
    }

    /// Whether the vCPUs are parked.
    pub(crate) fn is_paused(&self) -> bool {
        self.paused
    }

    /// Kicks every vCPU out of KVM_RUN and waits until all are parked (at most
    /// [`PAUSE_TIMEOUT`]). Pausing a paused VM does nothing.
    pub(crate) fn pause(&mut self) -> Result<()> {
        if self.paused {
            return Ok(());
        }
        // Drop stale notices from an earlier pause.
        while self.parked.try_recv().is_ok() {}
        for handle in &self.handles {
            handle.kicker.stop();
        }
        if let Err(e) = self.wait_parked() {
            // Those that did park run on, so the VM is not left half paused.
            self.paused = true;
            self.resume();
            return Err(e);
        }
        self.paused = true;
        Ok(())
    }

    /// Waits until every vCPU thread reported that it parked.
    fn wait_parked(&self) -> Result<()> {
        let deadline = Instant::now() + PAUSE_TIMEOUT;
        let mut parked = vec![false; self.handles.len()];
        while parked.iter().any(|p| !p) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.parked.recv_timeout(left) {
                Ok(index) => {
                    if let Some(p) = self.handles.iter().position(|h| h.index == index) {
                        parked[p] = true;
                    }
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                    let late = self
                        .handles
                        .iter()
                        .zip(&parked)
                        .find(|(_, p)| !**p)
                        .map_or(0, |(h, _)| h.index);
                    return Err(Error::PauseTimeout {
                        vcpu: late,
                        waited: PAUSE_TIMEOUT,
                    });
                }
            }
        }
        Ok(())
    }

    /// Lets parked vCPUs run again. Resuming a running VM does nothing.
    pub(crate) fn resume(&mut self) {
        if !self.paused {
            return;
        }
        for handle in &self.handles {
            // Cleared here, before the thread can run again, never by the thread itself: a
            // pause that follows at once must not have its stop request wiped by a thread
            // that only now takes this resume.
            handle.kicker.clear_stop();
            let _ = handle.commands.send(VcpuCommand::Resume);
        }
        self.paused = false;
    }

    /// The state of every parked vCPU, in index order. The VM must be paused.
    pub(crate) fn save_states(&self) -> Result<Vec<VcpuState>> {
        if !self.paused {
            return Err(Error::NotPaused);
        }
        let mut states = Vec::with_capacity(self.handles.len());
        for handle in &self.handles {
            let (tx, rx) = channel();
            let state = handle
                .commands
                .send(VcpuCommand::SaveState(tx))
                .ok()
                .and_then(|()| rx.recv_timeout(PAUSE_TIMEOUT).ok())
                .ok_or(Error::VcpuGone(handle.index))?;
            states.push(state?);
        }
        Ok(states)
    }

    /// Ends every vCPU thread and hands the vCPUs back (one whose thread panicked is lost).
    pub(crate) fn stop(self) -> Vec<Vcpu> {
        self.exiting.store(true, Ordering::SeqCst);
        for handle in &self.handles {
            handle.kicker.stop();
            let _ = handle.commands.send(VcpuCommand::Exit);
        }
        self.handles
            .into_iter()
            .filter_map(|h| h.thread.join().ok())
            .collect()
    }
}

fn spawn_one(
    mut vcpu: Vcpu,
    exits: Arc<BusExitHandler>,
    events: Sender<VmEvent>,
    parked: Sender<u8>,
    commands: Receiver<VcpuCommand>,
    exiting: Arc<AtomicBool>,
) -> Result<JoinHandle<Vcpu>> {
    let index = vcpu.index();
    std::thread::Builder::new()
        .name(crate::thread_names::vcpu(index))
        .spawn(move || {
            // Asked now, while /sys may be read: the answer is kept for an exit's error.
            vmm_vcpu::is_pvm_host();
            // Confined before its first KVM_RUN.
            crate::seccomp::apply(crate::seccomp::ThreadKind::Vcpu);
            loop {
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    vcpu.run(exits.as_ref())
                }));
                match result {
                    Ok(Ok(VcpuExitReason::Stopped)) if !exiting.load(Ordering::SeqCst) => {
                        let _ = parked.send(index);
                        if !park(&mut vcpu, &commands) {
                            break;
                        }
                        // A final stop may have come while parked.
                        if exiting.load(Ordering::SeqCst) {
                            break;
                        }
                    }
                    Ok(result) => {
                        if result.is_err() {
                            crate::metrics::metrics().vcpu.failures.inc();
                        }
                        report_end(&events, VmEvent::Vcpu(result));
                        break;
                    }
                    Err(_) => {
                        crate::metrics::metrics().vcpu.failures.inc();
                        report_end(&events, VmEvent::VcpuPanicked(index));
                        break;
                    }
                }
            }
            vcpu
        })
        .map_err(|e| Error::Thread("vcpu", e))
}

/// Tells the main thread how the vCPU's run ended. Never inlined, as [`park`], to keep the
/// thread's frame small (the channel's send of a `VmEvent` has a large one).
#[inline(never)]
fn report_end(events: &Sender<VmEvent>, event: VmEvent) {
    let _ = events.send(event);
}

/// Waits while paused; true to run again, false to return the vCPU.
///
/// Never inlined: with it (and a snapshot's state reads, several KiB of locals) inlined, the
/// thread's body has a frame of over 12 KiB whose stack probes touch every page of it on entry,
/// so each vCPU thread would keep ~20 KiB more resident stack for a path a running VM never takes.
#[inline(never)]
fn park(vcpu: &mut Vcpu, commands: &Receiver<VcpuCommand>) -> bool {
    loop {
        match commands.recv() {
            Ok(VcpuCommand::Resume) => return true,
            Ok(VcpuCommand::SaveState(reply)) => {
                let _ = reply.send(vcpu.save_state());
            }
            Ok(VcpuCommand::Exit) | Err(_) => return false,
        }
    }
}
