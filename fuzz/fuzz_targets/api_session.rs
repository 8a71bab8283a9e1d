//! A sequence of control API requests against one VM's [`vmm_core::Session`], the path the API
//! server's requests take: configuration (machine, boot source with the tiny PVH guest, drives,
//! network interfaces, vsock, entropy, balloon, logger, metrics), `InstanceStart`, pause and
//! resume, snapshot create and load, the GET endpoints and the actions, with garbage put into
//! one field now and then and whole garbage JSON bodies. Each operation is written as HTTP and
//! parsed by `RequestReader`, as on the socket. Every file path lies in a temporary folder of
//! this run, and the process works in a folder of its own, so no request reaches other files.
//!
//! Checked: nothing panics; every answer is 2xx or 4xx (a 5xx only where the VMM itself failed:
//! 503 after the guest powered the VM off, which the tiny guest does when `test=` is on its
//! command line, and 500 for a pause, resume or snapshot racing that power-off); the state
//! `GET /` reports and [`Session::state`] are the ones the sequence of answers implies (Not
//! started, Running, Paused); the VM never ends unless the guest was told to; the last full
//! snapshot, taken while paused, loads into a fresh session (paused) and snapshots again; every
//! VM is torn down at the end of each input: the process's fd and thread counts stay bounded.
//!
//! Guest memory is at most 64 MiB (most inputs use a few MiB) and a sequence at most
//! [`MAX_OPS`] requests long, so one input takes milliseconds to tens of milliseconds.
//! `/dev/kvm` must open: without it the target stops at its first input with a message.

#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::arbitrary::{self, Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Map, Value};
use vmm_api::{ApiConfig, ApiResponse, InstanceInfo, InstanceState, MemorySize, RequestReader};
use vmm_api::{SerialMode, VmConfig};
use vmm_core::Session;

#[path = "common/tiny_guest.rs"]
mod tiny_guest;

/// The longest sequence one input makes.
const MAX_OPS: usize = 24;
/// Disk images made in each run's folder.
const DISKS: usize = 2;
/// Guest memory sizes, MiB: small ones first, as the fuzzer picks low indices most.
const MEMORY_MIB: [u64; 7] = [2, 4, 8, 1, 16, 32, 64];
/// Extra fds a run may leave open for good: the logger's and the metrics' files (each a
/// process-wide sink, replaced by the next PUT) and what libFuzzer opens lazily.
const FD_SLACK: usize = 8;

/// What the process sets up once: its own folder, the guest, the starting counts.
struct Setup {
    root: PathBuf,
    guest: PathBuf,
    fds: usize,
    threads: usize,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let (guest, root) = tiny_guest::tiny_guest_and_scratch("api_session");
        Setup {
            root,
            guest,
            fds: fd_count(),
            threads: thread_count(),
        }
    })
}

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

fn thread_count() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// A short name: a known one, or garbage without a `/` (so it stays in the run's folder).
#[derive(Arbitrary, Debug)]
enum Name {
    Known(u8),
    Garbage(String),
}

impl Name {
    fn text(&self, known: &[&str]) -> String {
        match self {
            Name::Known(i) => known[usize::from(*i) % known.len()].to_string(),
            Name::Garbage(s) => s.replace('/', "_"),
        }
    }
}

/// A file in the run's folder.
#[derive(Arbitrary, Debug)]
enum FileName {
    Disk(u8),
    Snapshot(u8),
    Other(Name),
}

/// A JSON value of any type, a few levels deep.
#[derive(Arbitrary, Debug)]
enum Junk {
    Null,
    Bool(bool),
    Int(i64),
    Big(u64),
    Float(f64),
    Text(Name),
    List(Vec<Junk>),
    Object(Vec<(Name, Junk)>),
}

const KEYS: &[&str] = &[
    "drive_id",
    "path_on_host",
    "is_root_device",
    "is_read_only",
    "cache_type",
    "io_engine",
    "rate_limiter",
    "iface_id",
    "host_dev_name",
    "guest_mac",
    "mtu",
    "guest_cid",
    "uds_path",
    "vcpu_count",
    "mem_size_mib",
    "smt",
    "track_dirty_pages",
    "huge_pages",
    "cpu_template",
    "kernel_image_path",
    "boot_args",
    "initrd_path",
    "amount_mib",
    "deflate_on_oom",
    "stats_polling_interval_s",
    "snapshot_path",
    "mem_file_path",
    "snapshot_type",
    "resume_vm",
    "mem_backend",
    "network_overrides",
    "vsock_override",
    "log_path",
    "level",
    "metrics_path",
    "state",
    "action_type",
    "bandwidth",
    "ops",
    "size",
    "refill_time",
    "one_time_burst",
    "format",
    "key_file",
    "partuuid",
    "socket",
    "unknown",
];
const WORDS: &[&str] = &[
    "",
    "Full",
    "Diff",
    "Paused",
    "Resumed",
    "InstanceStart",
    "FlushMetrics",
    "SendCtrlAltDel",
    "PressPowerButton",
    "Unsafe",
    "Writeback",
    "Sync",
    "Async",
    "Trace",
    "Off",
    "2M",
    "None",
    "Transparent",
    "File",
    "Uffd",
    "raw",
    "qcow2",
    "disk0.img",
    "vm.state",
    "vm.mem",
    "06:00:00:00:00:01",
    "fz-tap0",
    "T2",
    "\u{0}",
    "ünï",
    "..",
    ".",
];

impl Junk {
    fn value(&self, depth: u8) -> Value {
        match self {
            Junk::Null => Value::Null,
            Junk::Bool(b) => json!(b),
            Junk::Int(n) => json!(n),
            Junk::Big(n) => json!(n),
            Junk::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
            Junk::Text(name) => json!(name.text(WORDS)),
            Junk::List(items) if depth < 3 => {
                Value::Array(items.iter().take(8).map(|j| j.value(depth + 1)).collect())
            }
            Junk::Object(fields) if depth < 3 => Value::Object(
                fields
                    .iter()
                    .take(8)
                    .map(|(k, v)| (k.text(KEYS), v.value(depth + 1)))
                    .collect(),
            ),
            Junk::List(_) | Junk::Object(_) => json!([]),
        }
    }
}

/// A token bucket's numbers: small ones mostly, boundary ones sometimes.
#[derive(Arbitrary, Debug)]
struct Bucket {
    size: u16,
    refill_time: u16,
    burst: Option<u16>,
    boundary: bool,
}

#[derive(Arbitrary, Debug)]
struct Limiter {
    bandwidth: Option<Bucket>,
    ops: Option<Bucket>,
}

impl Limiter {
    fn value(&self) -> Value {
        let bucket = |b: &Bucket| {
            let mut v = json!({"size": b.size, "refill_time": b.refill_time});
            if b.boundary {
                v = json!({"size": u64::MAX, "refill_time": u64::MAX, "one_time_burst": 0});
            } else if let Some(burst) = b.burst {
                v["one_time_burst"] = json!(burst);
            }
            v
        };
        let mut v = json!({});
        if let Some(b) = &self.bandwidth {
            v["bandwidth"] = bucket(b);
        }
        if let Some(b) = &self.ops {
            v["ops"] = bucket(b);
        }
        v
    }
}

/// One request of the sequence.
#[derive(Arbitrary, Debug)]
enum Op {
    MachineConfig {
        vcpus: u8,
        memory: u8,
        smt: bool,
        track_dirty_pages: bool,
    },
    PatchMachineConfig {
        vcpus: Option<u8>,
        memory: Option<u8>,
        track_dirty_pages: Option<bool>,
    },
    BootSource {
        /// 0: the tiny guest, 1: a disk image (not a kernel), else a missing file.
        kernel: u8,
        /// The tiny guest powers the VM off when this has `test=`.
        boot_args: Option<Name>,
        initrd: Option<FileName>,
    },
    Drive {
        id: Name,
        path: FileName,
        root: bool,
        read_only: Option<bool>,
        writeback: Option<bool>,
        limiter: Option<Limiter>,
    },
    PatchDrive {
        id: Name,
        path: Option<FileName>,
        limiter: Option<Limiter>,
    },
    Net {
        id: Name,
        tap: Name,
        mac: Option<[u8; 6]>,
        rx: Option<Limiter>,
        tx: Option<Limiter>,
    },
    PatchNet {
        id: Name,
        rx: Option<Limiter>,
        tx: Option<Limiter>,
    },
    Vsock {
        cid: u32,
        path: FileName,
    },
    Entropy(Option<Limiter>),
    Balloon {
        amount_mib: u16,
        deflate_on_oom: bool,
        stats: Option<u8>,
    },
    PatchBalloon(u16),
    PatchBalloonStats(u16),
    Logger {
        path: Option<FileName>,
        level: Name,
    },
    Metrics(FileName),
    Action(u8),
    Pause,
    Resume,
    CreateSnapshot {
        diff: bool,
        state: u8,
        mem: u8,
    },
    LoadSnapshot {
        state: u8,
        mem: u8,
        resume: bool,
        track_dirty_pages: Option<bool>,
    },
    Get(u8),
    /// Ends this session (its VM torn down) and starts a fresh one in the same folder.
    NewSession,
    /// A garbage body on any endpoint.
    Raw {
        endpoint: u8,
        body: Junk,
    },
}

/// An operation, and sometimes one of its body's fields overwritten with garbage.
#[derive(Arbitrary, Debug)]
struct Step {
    op: Op,
    junk: Option<(Name, Junk)>,
}

const ENDPOINTS: &[(&str, &str)] = &[
    ("PUT", "/machine-config"),
    ("PATCH", "/machine-config"),
    ("PUT", "/boot-source"),
    ("PUT", "/drives/rootfs"),
    ("PATCH", "/drives/rootfs"),
    ("PUT", "/network-interfaces/eth0"),
    ("PATCH", "/network-interfaces/eth0"),
    ("PUT", "/vsock"),
    ("PUT", "/entropy"),
    ("PUT", "/balloon"),
    ("PATCH", "/balloon"),
    ("PATCH", "/balloon/statistics"),
    ("PUT", "/logger"),
    ("PUT", "/metrics"),
    ("PUT", "/actions"),
    ("PATCH", "/vm"),
    ("PUT", "/snapshot/create"),
    ("PUT", "/snapshot/load"),
    ("PUT", "/mmds"),
];
const GETS: &[&str] = &[
    "/",
    "/version",
    "/vm/config",
    "/machine-config",
    "/balloon",
    "/balloon/statistics",
    "/mmds",
];
const ACTIONS: &[&str] = &[
    "InstanceStart",
    "SendCtrlAltDel",
    "PressPowerButton",
    "FlushMetrics",
];

/// The run's folder and what the sequence has done so far.
struct Run {
    dir: PathBuf,
    guest: PathBuf,
    /// The state the answers imply.
    state: InstanceState,
    /// The guest may power the VM off (`test=` on its command line).
    may_end: bool,
    /// The last snapshot written: a full one, taken while paused, with no later attempt.
    last_full: Option<(PathBuf, PathBuf)>,
}

impl Run {
    fn file(&self, name: &FileName) -> String {
        let path = match name {
            FileName::Disk(i) => self
                .dir
                .join(format!("disk{}.img", usize::from(*i) % DISKS)),
            FileName::Snapshot(i) => self.dir.join(format!("snap{}", i % 4)),
            // Prefixed: no garbage name is a snapshot file this run checks.
            FileName::Other(name) => self.dir.join(format!(
                "x-{}",
                name.text(&["missing", "serial", "vsock.sock"])
            )),
        };
        path.to_string_lossy().into_owned()
    }

    fn snapshot_files(&self, state: u8, mem: u8) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("vm{}.state", state % 3)),
            self.dir.join(format!("vm{}.mem", mem % 3)),
        )
    }

    /// The request `op` makes: method, path and body.
    fn request(&self, op: &Op) -> (&'static str, String, Option<Value>) {
        let mib = |i: u8| MEMORY_MIB[usize::from(i) % MEMORY_MIB.len()];
        // 0 and 3 are refused or wasteful; most picks are 1 or 2 vCPUs.
        let vcpus = |n: u8| [1u8, 2, 0, 33][usize::from(n) % 4];
        let put = |path: &str, body: Value| ("PUT", path.to_string(), Some(body));
        let patch = |path: &str, body: Value| ("PATCH", path.to_string(), Some(body));
        match op {
            Op::MachineConfig {
                vcpus: n,
                memory,
                smt,
                track_dirty_pages,
            } => put(
                "/machine-config",
                json!({"vcpu_count": vcpus(*n), "mem_size_mib": mib(*memory), "smt": smt,
                       "track_dirty_pages": track_dirty_pages}),
            ),
            Op::PatchMachineConfig {
                vcpus: n,
                memory,
                track_dirty_pages,
            } => {
                let mut body = Map::new();
                if let Some(n) = n {
                    body.insert("vcpu_count".into(), json!(vcpus(*n)));
                }
                if let Some(m) = memory {
                    body.insert("mem_size_mib".into(), json!(mib(*m)));
                }
                if let Some(t) = track_dirty_pages {
                    body.insert("track_dirty_pages".into(), json!(t));
                }
                patch("/machine-config", Value::Object(body))
            }
            Op::BootSource {
                kernel,
                boot_args,
                initrd,
            } => {
                let kernel = match kernel % 4 {
                    0 | 3 => self.guest.to_string_lossy().into_owned(),
                    1 => self.file(&FileName::Disk(0)),
                    _ => self.file(&FileName::Other(Name::Known(0))),
                };
                let mut body = json!({"kernel_image_path": kernel});
                if let Some(args) = boot_args {
                    body["boot_args"] = json!(args.text(&[
                        "console=ttyS0",
                        "console=ttyS0 test=1",
                        "acpi=off",
                        ""
                    ]));
                }
                if let Some(initrd) = initrd {
                    body["initrd_path"] = json!(self.file(initrd));
                }
                put("/boot-source", body)
            }
            Op::Drive {
                id,
                path,
                root,
                read_only,
                writeback,
                limiter,
            } => {
                let id = id.text(&["rootfs", "scratch", "d2"]);
                let mut body = json!({"drive_id": id, "path_on_host": self.file(path), "is_root_device": root});
                if let Some(ro) = read_only {
                    body["is_read_only"] = json!(ro);
                }
                if let Some(wb) = writeback {
                    body["cache_type"] = json!(if *wb { "Writeback" } else { "Unsafe" });
                }
                if let Some(l) = limiter {
                    body["rate_limiter"] = l.value();
                }
                put(&format!("/drives/{id}"), body)
            }
            Op::PatchDrive { id, path, limiter } => {
                let id = id.text(&["rootfs", "scratch", "d2"]);
                let mut body = json!({"drive_id": id});
                if let Some(path) = path {
                    body["path_on_host"] = json!(self.file(path));
                }
                if let Some(l) = limiter {
                    body["rate_limiter"] = l.value();
                }
                patch(&format!("/drives/{id}"), body)
            }
            Op::Net {
                id,
                tap,
                mac,
                rx,
                tx,
            } => {
                let id = id.text(&["eth0", "eth1"]);
                // Tap names of this fuzzer only (the process may create taps).
                let tap = format!("fz{}", tap.text(&["tap0", "tap1"]));
                let mut body = json!({"iface_id": id, "host_dev_name": tap});
                if let Some(m) = mac {
                    body["guest_mac"] = json!(m
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<Vec<_>>()
                        .join(":"));
                }
                if let Some(l) = rx {
                    body["rx_rate_limiter"] = l.value();
                }
                if let Some(l) = tx {
                    body["tx_rate_limiter"] = l.value();
                }
                put(&format!("/network-interfaces/{id}"), body)
            }
            Op::PatchNet { id, rx, tx } => {
                let id = id.text(&["eth0", "eth1"]);
                let mut body = json!({"iface_id": id});
                if let Some(l) = rx {
                    body["rx_rate_limiter"] = l.value();
                }
                if let Some(l) = tx {
                    body["tx_rate_limiter"] = l.value();
                }
                patch(&format!("/network-interfaces/{id}"), body)
            }
            Op::Vsock { cid, path } => put(
                "/vsock",
                json!({"guest_cid": cid, "uds_path": self.file(path)}),
            ),
            Op::Entropy(limiter) => put(
                "/entropy",
                match limiter {
                    Some(l) => json!({"rate_limiter": l.value()}),
                    None => json!({}),
                },
            ),
            Op::Balloon {
                amount_mib,
                deflate_on_oom,
                stats,
            } => {
                let mut body =
                    json!({"amount_mib": amount_mib % 80, "deflate_on_oom": deflate_on_oom});
                if let Some(s) = stats {
                    body["stats_polling_interval_s"] = json!(s);
                }
                put("/balloon", body)
            }
            Op::PatchBalloon(mib) => patch("/balloon", json!({"amount_mib": mib % 80})),
            Op::PatchBalloonStats(s) => patch(
                "/balloon/statistics",
                json!({"stats_polling_interval_s": s}),
            ),
            Op::Logger { path, level } => {
                let mut body = json!({"level": level.text(&["Info", "Warning", "Error", "Off"])});
                if let Some(path) = path {
                    body["log_path"] = json!(self.file(path));
                }
                put("/logger", body)
            }
            Op::Metrics(path) => put("/metrics", json!({"metrics_path": self.file(path)})),
            Op::Action(a) => put(
                "/actions",
                json!({"action_type": ACTIONS[usize::from(*a) % ACTIONS.len()]}),
            ),
            Op::Pause => patch("/vm", json!({"state": "Paused"})),
            Op::Resume => patch("/vm", json!({"state": "Resumed"})),
            Op::CreateSnapshot { diff, state, mem } => {
                let (state, mem) = self.snapshot_files(*state, *mem);
                put(
                    "/snapshot/create",
                    json!({"snapshot_path": state, "mem_file_path": mem,
                           "snapshot_type": if *diff { "Diff" } else { "Full" }}),
                )
            }
            Op::LoadSnapshot {
                state,
                mem,
                resume,
                track_dirty_pages,
            } => {
                let (state, mem) = self.snapshot_files(*state, *mem);
                let mut body =
                    json!({"snapshot_path": state, "mem_file_path": mem, "resume_vm": resume});
                if let Some(t) = track_dirty_pages {
                    body["track_dirty_pages"] = json!(t);
                }
                put("/snapshot/load", body)
            }
            Op::Get(i) => ("GET", GETS[usize::from(*i) % GETS.len()].to_string(), None),
            Op::NewSession => unreachable!("not a request"),
            Op::Raw { endpoint, body } => {
                let (method, path) = ENDPOINTS[usize::from(*endpoint) % ENDPOINTS.len()];
                (method, path.to_string(), Some(body.value(0)))
            }
        }
    }
}

/// The request written as HTTP and read back as the server reads it: the request, or the
/// reader's refusal.
fn parse(
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<vmm_api::ApiRequest, ApiResponse> {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
    if method != "GET" {
        raw.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    raw.push_str("\r\n");
    raw.push_str(&body);
    match RequestReader::new().push(raw.as_bytes()) {
        Ok(Some(request)) => Ok(request),
        Ok(None) => panic!("a whole request came out incomplete: {raw:?}"),
        Err(response) => Err(response),
    }
}

fn may_end(session: &Session) -> bool {
    session.config().is_some_and(|api| {
        let vm = &api.vm;
        [&vm.cmdline, &vm.append]
            .iter()
            .any(|s| s.as_deref().is_some_and(|s| s.contains("test=")))
    })
}

/// Whether `status` is an answer the VMM may give to `what` in this run.
fn check_status(run: &Run, what: &str, response: &ApiResponse) {
    let status = response.status;
    if (200..300).contains(&status) || (400..500).contains(&status) {
        if status >= 400 {
            assert!(
                response.fault_message().is_some(),
                "{what}: no fault message: {response:?}"
            );
        }
        return;
    }
    // The VM powered off under the request (the tiny guest with `test=`).
    assert!(run.may_end && status >= 500, "{what}: {response:?}");
}

/// `API_SESSION_TRACE=1` prints each request and its answer (to read what an input does).
fn trace() -> bool {
    static TRACE: OnceLock<bool> = OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("API_SESSION_TRACE").is_some())
}

/// Applies one step to the session and checks its answer against the model.
fn step(run: &mut Run, session: &mut Session, step: &Step) {
    let (method, path, mut body) = run.request(&step.op);
    if let (Some((key, junk)), Some(Value::Object(map))) = (&step.junk, body.as_mut()) {
        map.insert(key.text(KEYS), junk.value(0));
    }
    let what = format!(
        "{method} {path} {}",
        body.as_ref().map(Value::to_string).unwrap_or_default()
    );
    let request = match parse(method, &path, body.as_ref()) {
        Ok(request) => request,
        Err(refused) => {
            assert!(
                (400..500).contains(&refused.status),
                "{what}: refused {refused:?}"
            );
            return;
        }
    };
    let before = run.state;
    let response = session.handle(request.clone());
    if trace() {
        eprintln!(
            "{what} -> {} {}",
            response.status,
            response.body.as_deref().unwrap_or("")
        );
    }
    check_status(run, &what, &response);
    let ok = (200..300).contains(&response.status);
    use vmm_api::{ActionType, ApiRequest, VmState};
    match &request {
        ApiRequest::Action(ActionType::InstanceStart) if ok => {
            assert_eq!(before, InstanceState::NotStarted, "{what}: started twice");
            run.state = InstanceState::Running;
            run.may_end = may_end(session);
        }
        ApiRequest::LoadSnapshot(load) if ok => {
            assert_eq!(
                before,
                InstanceState::NotStarted,
                "{what}: loaded into a started VM"
            );
            run.state = if load.resume_vm {
                InstanceState::Running
            } else {
                InstanceState::Paused
            };
            run.may_end = may_end(session);
        }
        ApiRequest::PatchVm(VmState::Paused) if ok => {
            assert_ne!(
                before,
                InstanceState::NotStarted,
                "{what}: paused before boot"
            );
            run.state = InstanceState::Paused;
        }
        ApiRequest::PatchVm(VmState::Resumed) if ok => {
            assert_ne!(
                before,
                InstanceState::NotStarted,
                "{what}: resumed before boot"
            );
            run.state = InstanceState::Running;
        }
        ApiRequest::PatchVm(_) if before != InstanceState::NotStarted && !run.may_end => {
            panic!("{what}: pause or resume of a started VM failed: {response:?}");
        }
        ApiRequest::CreateSnapshot(params) => {
            run.last_full =
                (ok && params.snapshot_type == vmm_api::SnapshotType::Full).then(|| {
                    (
                        params.snapshot_path.clone().into(),
                        params.mem_file_path.clone().into(),
                    )
                });
            if ok {
                assert_eq!(
                    before,
                    InstanceState::Paused,
                    "{what}: snapshot of a running VM"
                );
            }
        }
        ApiRequest::GetInstanceInfo if ok => {
            let info: InstanceInfo =
                serde_json::from_str(response.body.as_deref().unwrap_or("")).expect("GET / body");
            assert_eq!(info.state, run.state, "{what}");
        }
        _ => {}
    }
    if let Some(body) = &response.body {
        let _: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{what}: {e}: {body}"));
    }
    match session.state() {
        Some(state) => assert_eq!(state, run.state, "{what}: the session's state"),
        None => {
            let why = session.ended().unwrap_or("?").to_string();
            assert!(
                run.may_end || why.starts_with("signal"),
                "{what}: the VM ended unexpectedly: {why}"
            );
        }
    }
}

/// A configuration like a `vmm --api-sock` process's before any request: small memory, the
/// console into the run's folder.
fn fresh_session(dir: &Path) -> Session {
    Session::new(ApiConfig::new(VmConfig {
        memory: MemorySize(4 << 20),
        serial: SerialMode::File(dir.join("serial")),
        ..VmConfig::default()
    }))
}

fn new_run_dir(root: &Path) -> PathBuf {
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = root.join(format!("run{n}"));
    std::fs::create_dir_all(&dir).expect("the run's folder");
    for i in 0..DISKS {
        let disk = std::fs::File::create(dir.join(format!("disk{i}.img"))).expect("a disk");
        disk.set_len(64 << 10).expect("the disk's size");
    }
    dir
}

/// Loads `state` and `mem` into a fresh session: it must come up paused and snapshot again.
fn check_loads(dir: &Path, state: &Path, mem: &Path) {
    let mut session = fresh_session(dir);
    let load = json!({"snapshot_path": state, "mem_file_path": mem, "resume_vm": false});
    let request = parse("PUT", "/snapshot/load", Some(&load)).expect("a load request");
    let response = session.handle(request);
    assert_eq!(
        response.status, 204,
        "a snapshot taken while paused did not load: {response:?}"
    );
    assert_eq!(session.state(), Some(InstanceState::Paused));
    let again =
        json!({"snapshot_path": dir.join("again.state"), "mem_file_path": dir.join("again.mem")});
    let request = parse("PUT", "/snapshot/create", Some(&again)).expect("a create request");
    let response = session.handle(request);
    assert_eq!(
        response.status, 204,
        "a loaded VM did not snapshot: {response:?}"
    );
}

/// Removes what the run left in `dir` (its folder, and files garbage bodies named relative to
/// the working folder). Files are emptied first: the process-wide logger and metrics may still
/// hold one open, and a deleted file that is written on would grow out of sight.
fn clean(dir: &Path) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => {
                clean(&path);
                let _ = std::fs::remove_dir(&path);
            }
            Ok(t) if t.is_file() => {
                let _ = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map(|f| f.set_len(0));
                let _ = std::fs::remove_file(&path);
            }
            _ => {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

/// Works in another folder until dropped (also on a panic): a relative path in a garbage body
/// lands in the fuzzer's folder, not in the repository. libFuzzer itself, between inputs,
/// writes the corpus by paths relative to the folder it started in.
struct WorkIn(PathBuf);

impl WorkIn {
    fn enter(dir: &Path) -> WorkIn {
        let back = std::env::current_dir().expect("the working folder");
        std::env::set_current_dir(dir).expect("into the fuzzer's folder");
        WorkIn(back)
    }
}

impl Drop for WorkIn {
    fn drop(&mut self) {
        let _ = std::env::set_current_dir(&self.0);
    }
}

fuzz_target!(|data: &[u8]| {
    let setup = setup();
    let _cwd = WorkIn::enter(&setup.root);
    let mut u = Unstructured::new(data);
    let mut steps = Vec::new();
    // An exhausted `Unstructured` still gives default steps: stop at the end of the data.
    while steps.len() < MAX_OPS && !u.is_empty() {
        match Step::arbitrary(&mut u) {
            Ok(s) => steps.push(s),
            Err(_) => break,
        }
    }
    let dir = new_run_dir(&setup.root);
    let mut run = Run {
        dir: dir.clone(),
        guest: setup.guest.clone(),
        state: InstanceState::NotStarted,
        may_end: false,
        last_full: None,
    };
    let mut session = fresh_session(&dir);
    for s in &steps {
        if let Op::NewSession = s.op {
            drop(std::mem::replace(&mut session, fresh_session(&dir)));
            run.state = InstanceState::NotStarted;
            run.may_end = false;
            continue;
        }
        step(&mut run, &mut session, s);
    }
    // Torn down before the files it has open go.
    drop(session);
    if let Some((state, mem)) = run.last_full.take() {
        check_loads(&dir, &state, &mem);
    }
    clean(&setup.root);

    let (fds, threads) = (fd_count(), thread_count());
    assert!(
        fds <= setup.fds + FD_SLACK,
        "fds leak: {fds} open, {} at the start",
        setup.fds
    );
    assert!(
        threads <= setup.threads + 1,
        "threads leak: {threads} running, {} at the start",
        setup.threads
    );
});
