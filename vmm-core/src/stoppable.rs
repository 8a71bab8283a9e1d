//! Threads that sleep on file descriptors instead of waking on a timer: a stop eventfd written
//! once (and never read, so every poller of it sees it) ends them, and [`wait_readable`] waits
//! for a descriptor or that stop.

use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use vmm_sys_util::eventfd::EventFd;

/// Waits until one of `fds` is readable (or hung up), at most `timeout` (`None`: no limit).
/// Returns the readiness of each, in order; all false after a timeout or a signal.
pub(crate) fn wait_readable(fds: &[RawFd], timeout: Option<Duration>) -> Vec<bool> {
    let mut polls: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = timeout.map_or(-1, |t| {
        t.as_millis().clamp(1, i32::MAX as u128) as libc::c_int
    });
    // SAFETY: `polls` is a valid array of polls.len() pollfd structs for the whole call.
    let n = unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, ms) };
    if n < 0 {
        // EINTR: report nothing ready; the caller looks again.
        return vec![false; fds.len()];
    }
    polls.iter().map(|p| p.revents != 0).collect()
}

/// A named thread that gets a stop eventfd to poll beside its own descriptors; dropping this
/// writes the stop and joins the thread.
pub(crate) struct StoppableThread {
    stop: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
}

impl StoppableThread {
    /// Starts `body` on a thread called `name`; `body` returns once the stop is readable.
    pub(crate) fn spawn(
        name: &str,
        body: impl FnOnce(Arc<EventFd>) + Send + 'static,
    ) -> io::Result<StoppableThread> {
        let stop = Arc::new(EventFd::new(libc::EFD_NONBLOCK)?);
        let stop_thread = stop.clone();
        let kind_name = name.to_string();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                // Confined before it serves anything.
                crate::seccomp::apply_for_thread_name(&kind_name);
                body(stop_thread)
            })?;
        Ok(StoppableThread {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for StoppableThread {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
