//! The client subcommands (`vmm pause`, `resume`, `status`, `stop`, `snapshot`): one request
//! each to a running VMM's control API socket.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use vmm_api::{ApiClient, ClientError};

/// Most API calls answer at once; a snapshot of a large guest takes longer.
const TIMEOUT: Duration = Duration::from_secs(300);
/// Exit code of `vmm stop` when the guest did not stop by itself.
const FORCED: u8 = 4;

fn client(sock: &Path) -> ApiClient {
    ApiClient::new(sock, TIMEOUT)
}

fn fail(error: &ClientError) -> ExitCode {
    eprintln!("vmm: error: {}", super::error_chain(error));
    ExitCode::from(1)
}

fn done(result: Result<vmm_api::ClientResponse, ClientError>) -> ExitCode {
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// `PATCH /vm` with `state`.
pub fn patch_vm(sock: &Path, state: &str) -> ExitCode {
    let body = format!(r#"{{"state": "{state}"}}"#);
    done(client(sock).request("PATCH", "/vm", Some(&body)))
}

/// `GET /`, printed as it came.
pub fn status(sock: &Path) -> ExitCode {
    match client(sock).request("GET", "/", None) {
        Ok(response) => {
            println!("{}", response.body.trim());
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// `PUT /snapshot/create`, Full or (`diff`) Diff; sealed with `key_file` when given.
pub fn snapshot_create(
    sock: &Path,
    snapshot: &Path,
    mem: &Path,
    diff: bool,
    key_file: Option<&Path>,
) -> ExitCode {
    let mut body = serde_json::json!({
        "snapshot_type": if diff { "Diff" } else { "Full" },
        "snapshot_path": snapshot,
        "mem_file_path": mem,
    });
    if let Some(key) = key_file {
        body["key_file"] = serde_json::json!(key);
    }
    let body = body.to_string();
    done(client(sock).request("PUT", "/snapshot/create", Some(&body)))
}

/// `PUT /snapshot/load` (of a sealed snapshot with `key_file`).
pub fn snapshot_load(
    sock: &Path,
    snapshot: &Path,
    mem: &Path,
    resume: bool,
    key_file: Option<&Path>,
) -> ExitCode {
    let mut body = serde_json::json!({
        "snapshot_path": snapshot,
        "mem_backend": {"backend_type": "File", "backend_path": mem},
        "resume_vm": resume,
    });
    if let Some(key) = key_file {
        body["key_file"] = serde_json::json!(key);
    }
    let body = body.to_string();
    done(client(sock).request("PUT", "/snapshot/load", Some(&body)))
}

/// Asks the guest to stop (the ACPI power button, or Ctrl+Alt+Del when the guest has no power
/// button: `acpi=off`), waits `timeout_s`, then sends SIGTERM to the VMM. The VMM is gone once
/// its socket stops answering (it removes the socket on exit).
pub fn stop(sock: &Path, timeout_s: u64) -> ExitCode {
    let api = client(sock);
    let pid = match api.server_pid() {
        Ok(pid) => pid,
        Err(e) => return fail(&e),
    };
    let asked = api.ask_guest_to_stop();
    if let Err(e) = &asked {
        eprintln!(
            "vmm: the guest could not be asked to stop: {}",
            super::error_chain(e)
        );
    }
    if asked.is_ok() && wait_gone(sock, Duration::from_secs(timeout_s)) {
        eprintln!("vmm: the guest stopped");
        return ExitCode::SUCCESS;
    }
    // SAFETY: kill has no memory effects; pid came from SO_PEERCRED of the VMM's socket.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    if wait_gone(sock, Duration::from_secs(10)) {
        eprintln!("vmm: the guest did not stop within {timeout_s} s: stopped the VMM (SIGTERM)");
        ExitCode::from(FORCED)
    } else {
        eprintln!("vmm: error: the VMM (pid {pid}) did not stop after SIGTERM");
        ExitCode::from(1)
    }
}

fn wait_gone(sock: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::os::unix::net::UnixStream::connect(sock).is_err() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}
