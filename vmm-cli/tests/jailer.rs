//! Tier 2: `vmm jail` (the jailer) as firecracker-containerd and Kata run Firecracker's: this
//! build's `vmm` under the name `firecracker` as the exec file, a jail under a scratch base
//! folder, a fresh network namespace, a cgroup, uid/gid 1000, and the tiny PVH guest booted,
//! paused, snapshotted and resumed through the API socket inside the jail. Needs root (it
//! skips, saying so, otherwise).

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{guest_file, no_content, scratch, wait_for_state, Connection};

const VMM: &str = env!("CARGO_BIN_EXE_vmm");
const JAIL_UID: u32 = 1000;

fn is_root() -> bool {
    // SAFETY: geteuid has no memory effects.
    let root = unsafe { libc::geteuid() == 0 };
    // CI runs as root: there a jail test that cannot run is a failure, not a skip.
    assert!(
        root || std::env::var_os("CI").is_none(),
        "the jailer tests need root (CI is set, so they may not be skipped)"
    );
    root
}

/// `vmm jail ARGS` (or, with `as_jailer`, this binary under the name `jailer`).
fn jail_command(dir: &Path, as_jailer: bool) -> Command {
    if as_jailer {
        let link = dir.join("jailer");
        if !link.exists() {
            std::os::unix::fs::symlink(VMM, &link).unwrap();
        }
        Command::new(link)
    } else {
        let mut c = Command::new(VMM);
        c.arg("jail");
        c
    }
}

/// A copy of this build's `vmm` named `firecracker` (the exec file the jail copies).
fn firecracker_exec(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let exec = bin.join("firecracker");
    if !exec.exists() {
        std::fs::copy(VMM, &exec).unwrap();
    }
    exec
}

#[test]
fn bad_input_is_one_line_and_creates_nothing() {
    let dir = scratch("jail-bad");
    let exec = firecracker_exec(&dir);
    let exec = exec.to_str().unwrap();
    let base = dir.join("base");
    let base_s = base.to_str().unwrap();
    let long_id = "a".repeat(65);
    let missing = dir.join("missing").to_string_lossy().into_owned();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--id", "vm", "--exec-file", &missing], "--exec-file"),
        (vec!["--id", "vm", "--exec-file", "/"], "not a regular file"),
        (vec!["--id", "a/b", "--exec-file", exec], "--id"),
        (vec!["--id", "..", "--exec-file", exec], "--id"),
        (vec!["--id", &long_id, "--exec-file", exec], "--id"),
        (vec!["--id", "", "--exec-file", exec], "--id"),
        (
            vec![
                "--id",
                "vm",
                "--exec-file",
                exec,
                "--netns",
                "/var/run/netns/no-such-netns",
            ],
            "--netns",
        ),
        (
            vec!["--id", "vm", "--exec-file", exec, "--cgroup-version", "3"],
            "--cgroup-version",
        ),
        (
            vec!["--id", "vm", "--exec-file", exec, "--cgroup", "pids.max"],
            "--cgroup",
        ),
        (
            vec![
                "--id",
                "vm",
                "--exec-file",
                exec,
                "--cgroup",
                "nosuchctl.max=1",
            ],
            "no cgroup v1 hierarchy has the nosuchctl controller",
        ),
        (
            vec![
                "--id",
                "vm",
                "--exec-file",
                exec,
                "--resource-limit",
                "nproc=5",
            ],
            "--resource-limit",
        ),
        (
            vec![
                "--id",
                "vm",
                "--exec-file",
                exec,
                "--parent-cgroup",
                "../up",
            ],
            "--parent-cgroup",
        ),
    ];
    for (i, (args, needle)) in cases.iter().enumerate() {
        let out: Output = jail_command(&dir, i % 2 == 1)
            .args(args)
            .args([
                "--uid",
                "1000",
                "--gid",
                "1000",
                "--chroot-base-dir",
                base_s,
            ])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            stderr.starts_with("jailer: ") && stderr.contains(needle),
            "{args:?}: {stderr}"
        );
        assert!(!base.exists(), "{args:?} created {}", base.display());
    }
    // A relative base folder.
    let out = jail_command(&dir, false)
        .args([
            "--id",
            "vm",
            "--exec-file",
            exec,
            "--uid",
            "1",
            "--gid",
            "1",
        ])
        .args(["--chroot-base-dir", "relative/base"])
        .current_dir(&dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with("jailer: --chroot-base-dir"), "{stderr}");
    assert!(!dir.join("relative").exists());
    // A missing required flag.
    let out = jail_command(&dir, true)
        .args(["--id", "vm"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with("jailer: "), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A network namespace made for one test (`ip netns add`), deleted on drop.
struct NetNs(String);

impl NetNs {
    fn new(name: String) -> NetNs {
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("ip (iproute2) is needed");
        assert!(out.status.success(), "ip netns add: {out:?}");
        NetNs(name)
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.0)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// Where a cgroup file such as `pids.max` lives on this host: (the `--cgroup-version` to use,
/// the hierarchy's root that has the `pids` controller).
fn pids_hierarchy() -> (&'static str, PathBuf) {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() > 3 && f[2] == "cgroup" && f[3].split(',').any(|o| o == "pids") {
            return ("1", PathBuf::from(f[1]));
        }
    }
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() > 2 && f[2] == "cgroup2" {
            let root = PathBuf::from(f[1]);
            let controllers =
                std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
            if controllers.split_whitespace().any(|c| c == "pids") {
                return ("2", root);
            }
        }
    }
    panic!("no cgroup hierarchy with the pids controller");
}

/// Removes a cgroup folder once its processes are gone (an upper-bound deadline only).
fn remove_cgroup(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while dir.exists() {
        if std::fs::remove_dir(dir).is_ok() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Until `vmm` is built as a static executable, the jail needs the dynamic loader and the
/// libraries `ldd` names, at their paths, inside the chroot: the test puts them there (the
/// jailer itself copies only the exec file, as Firecracker's does). Nothing for a static build.
fn add_shared_libraries(exec: &Path, chroot: &Path) {
    let Ok(out) = Command::new("ldd").arg(exec).output() else {
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    for path in text.split_whitespace().filter(|w| w.starts_with('/')) {
        let dst = chroot.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(path, &dst).unwrap();
    }
}

/// A jailed VMM: the jailer's child (the VMM once it execs), the jail's paths, its cgroup.
struct Jailed {
    child: Option<Child>,
    pid: u32,
    chroot: PathBuf,
    /// The `--parent-cgroup` folder (shared by this process's tests) and the VM's own.
    cgroup_parent: PathBuf,
    cgroup: PathBuf,
    id_dir: PathBuf,
}

impl Jailed {
    fn sock(&self) -> PathBuf {
        self.chroot.join("run/fc.sock")
    }

    /// Waits for the API socket; fails at once if the jailer or VMM ended first.
    fn connect(&mut self) -> Connection {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !self.sock().exists() {
            let gone = match self.child.as_mut() {
                Some(child) => child.try_wait().unwrap().is_some(),
                None => !Path::new(&format!("/proc/{}", self.pid)).exists(),
            };
            if gone {
                let mut stderr = String::new();
                if let Some(mut pipe) = self.child.as_mut().and_then(|c| c.stderr.take()) {
                    let _ = pipe.read_to_string(&mut stderr);
                }
                panic!("the jailed VMM ended before its socket appeared: {stderr}");
            }
            assert!(Instant::now() < deadline, "the API socket never appeared");
            std::thread::sleep(Duration::from_millis(10));
        }
        Connection::open(&self.sock())
    }

    fn status_field(&self, name: &str) -> String {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .unwrap_or_else(|| panic!("no {name} in /proc/{}/status", self.pid))
            .trim()
            .to_string()
    }
}

impl Drop for Jailed {
    fn drop(&mut self) {
        // SAFETY: kill has no memory effects; the pid is this test's VMM.
        unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGKILL) };
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Path::new(&format!("/proc/{}", self.pid)).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        remove_cgroup(&self.cgroup);
        // The last test to end removes the shared parent.
        let _ = std::fs::remove_dir(&self.cgroup_parent);
        let _ = std::fs::remove_dir_all(&self.id_dir);
    }
}

/// Starts `vmm jail` for `firecracker --api-sock /run/fc.sock` with `extra` jailer flags.
fn start_jail(dir: &Path, id: &str, netns: &NetNs, extra: &[&str]) -> Jailed {
    let exec = firecracker_exec(dir);
    let base = dir.join("base");
    let id_dir = base.join("firecracker").join(id);
    let chroot = id_dir.join("root");
    std::fs::create_dir_all(&chroot).unwrap();
    add_shared_libraries(&exec, &chroot);
    let (version, hierarchy) = pids_hierarchy();
    let parent = format!("vmm-jail-tests-{}", std::process::id());
    let cgroup = hierarchy.join(&parent).join(id);
    let daemon = extra.contains(&"--daemonize");
    let mut child = jail_command(dir, false)
        .args(["--id", id, "--exec-file"])
        .arg(&exec)
        .args(["--uid", "1000", "--gid", "1000", "--chroot-base-dir"])
        .arg(&base)
        .arg("--netns")
        .arg(netns.path())
        .args(["--cgroup-version", version, "--parent-cgroup", &parent])
        .args([
            "--cgroup",
            "pids.max=100",
            "--resource-limit",
            "no-file=1024",
        ])
        .args(extra)
        .args(["--", "--api-sock", "/run/fc.sock"])
        .env("SECRET_TEST_VARIABLE", "must not reach the VMM")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = if daemon || extra.contains(&"--new-pid-ns") {
        // The jailer's own process ends; the VMM's host pid is in the pid file.
        let status = child.wait().unwrap();
        let mut stderr = String::new();
        if let Some(mut pipe) = child.stderr.take() {
            let _ = pipe.read_to_string(&mut stderr);
        }
        assert!(status.success(), "jailer: {status}: {stderr}");
        let pid_file = chroot.join("firecracker.pid");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(pid) = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                break pid;
            }
            assert!(Instant::now() < deadline, "no pid file");
            std::thread::sleep(Duration::from_millis(10));
        }
    } else {
        child.id()
    };
    Jailed {
        child: (!daemon && !extra.contains(&"--new-pid-ns")).then_some(child),
        pid,
        chroot,
        cgroup_parent: hierarchy.join(&parent),
        cgroup,
        id_dir,
    }
}

/// Everything the jail promises about the VMM process.
fn check_confinement(jail: &Jailed, id: &str, netns: &NetNs) {
    let pid = jail.pid;
    // Its root is the chroot (seen from here, /proc/PID/root is the same inode).
    let root = std::fs::metadata(format!("/proc/{pid}/root/")).unwrap();
    let chroot = std::fs::metadata(&jail.chroot).unwrap();
    assert_eq!((root.dev(), root.ino()), (chroot.dev(), chroot.ino()));
    assert!(Path::new(&format!("/proc/{pid}/root/firecracker")).exists());
    // The copy, not a link: another inode than the exec file.
    let copy = std::fs::metadata(jail.chroot.join("firecracker")).unwrap();
    assert_eq!(copy.nlink(), 1);
    // Only the device nodes the VMM needs, owned by its user.
    for dev in ["dev/kvm", "dev/net/tun", "dev/urandom"] {
        let m = std::fs::metadata(jail.chroot.join(dev)).unwrap();
        assert_eq!((m.uid(), m.gid()), (JAIL_UID, JAIL_UID), "{dev}");
        let host = std::fs::metadata(Path::new("/").join(dev));
        if let Ok(host) = host {
            assert_eq!(m.rdev(), host.rdev(), "{dev}");
        }
    }
    assert!(!jail.chroot.join("dev/null").exists());
    assert!(!jail.chroot.join("proc").exists());
    // Its user, capabilities, no_new_privs.
    let uid = jail.status_field("Uid");
    let gid = jail.status_field("Gid");
    assert_eq!(uid.split_whitespace().collect::<Vec<_>>(), ["1000"; 4]);
    assert_eq!(gid.split_whitespace().collect::<Vec<_>>(), ["1000"; 4]);
    assert_eq!(jail.status_field("Groups"), "");
    assert_eq!(jail.status_field("NoNewPrivs"), "1");
    for caps in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(
            u64::from_str_radix(&jail.status_field(caps), 16),
            Ok(0),
            "{caps}"
        );
    }
    // No environment.
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(environ.is_empty(), "{}", String::from_utf8_lossy(&environ));
    // Its network namespace.
    let ns = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    let want = std::fs::metadata(netns.path()).unwrap().ino();
    assert_eq!(ns.to_string_lossy(), format!("net:[{want}]"));
    // Its cgroup, with the value asked for.
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let parent = format!("vmm-jail-tests-{}", std::process::id());
    let want = format!("/{parent}/{id}");
    assert!(
        cgroups.lines().any(|l| {
            let f: Vec<&str> = l.splitn(3, ':').collect();
            f.len() == 3
                && f[2] == want
                && (f[1].is_empty() || f[1].split(',').any(|c| c == "pids"))
        }),
        "{cgroups}"
    );
    let max = std::fs::read_to_string(jail.cgroup.join("pids.max")).unwrap();
    assert_eq!(max.trim(), "100");
    // Its limits.
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert_eq!(files.split_whitespace().nth(3), Some("1024"), "{files}");
}

#[test]
fn jailed_firecracker_boots_pauses_snapshots_resumes() {
    if !is_root() {
        eprintln!("skipped: the jailer needs root");
        return;
    }
    let dir = scratch("jail-run");
    let id = format!("jail-run-{}", std::process::id());
    let netns = NetNs::new(format!("vmm-jail-{}", std::process::id()));
    let mut jail = start_jail(&dir, &id, &netns, &[]);
    let mut conn = jail.connect();
    check_confinement(&jail, &id, &netns);
    // The kernel goes into the jail and is named by its path there.
    std::fs::copy(guest_file("tiny-pvh.elf"), jail.chroot.join("tiny-pvh.elf")).unwrap();
    no_content(
        conn.call(
            "PUT",
            "/boot-source",
            Some(r#"{"kernel_image_path": "/tiny-pvh.elf", "boot_args": "console=ttyS0"}"#),
        ),
        "boot-source",
    );
    no_content(
        conn.call(
            "PUT",
            "/machine-config",
            Some(r#"{"vcpu_count": 1, "mem_size_mib": 64}"#),
        ),
        "machine-config",
    );
    no_content(
        conn.call(
            "PUT",
            "/actions",
            Some(r#"{"action_type": "InstanceStart"}"#),
        ),
        "InstanceStart",
    );
    wait_for_state(&mut conn, "Running");
    let info: serde_json::Value = serde_json::from_str(&conn.call("GET", "/", None).body).unwrap();
    assert_eq!(info["id"], id.as_str(), "{info}");
    no_content(
        conn.call("PATCH", "/vm", Some(r#"{"state": "Paused"}"#)),
        "pause",
    );
    wait_for_state(&mut conn, "Paused");
    no_content(
        conn.call(
            "PUT",
            "/snapshot/create",
            Some(r#"{"snapshot_type": "Full", "snapshot_path": "/vm.snap", "mem_file_path": "/vm.mem"}"#),
        ),
        "snapshot",
    );
    for file in ["vm.snap", "vm.mem"] {
        let m = std::fs::metadata(jail.chroot.join(file)).unwrap();
        assert!(m.len() > 0, "{file}");
        assert_eq!(m.uid(), JAIL_UID, "{file}");
    }
    no_content(
        conn.call("PATCH", "/vm", Some(r#"{"state": "Resumed"}"#)),
        "resume",
    );
    wait_for_state(&mut conn, "Running");
    check_confinement(&jail, &id, &netns);
    let pid_file = std::fs::read_to_string(jail.chroot.join("firecracker.pid")).unwrap();
    assert_eq!(pid_file.trim(), jail.pid.to_string());
    drop(conn);
    let cgroup = jail.cgroup.clone();
    drop(jail);
    assert!(!cgroup.exists(), "{} was not removed", cgroup.display());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn daemonized_in_a_new_pid_namespace() {
    if !is_root() {
        eprintln!("skipped: the jailer needs root");
        return;
    }
    let dir = scratch("jail-daemon");
    let id = format!("jail-daemon-{}", std::process::id());
    let netns = NetNs::new(format!("vmm-jail-d-{}", std::process::id()));
    let mut jail = start_jail(&dir, &id, &netns, &["--daemonize", "--new-pid-ns"]);
    let mut conn = jail.connect();
    let r = conn.call("GET", "/", None);
    assert_eq!(r.status, 200, "{}", r.body);
    check_confinement(&jail, &id, &netns);
    // pid 1 of its own PID namespace, in a session of its own, stdio on /dev/null.
    let nspid = jail.status_field("NSpid");
    assert_eq!(
        nspid.split_whitespace().collect::<Vec<_>>(),
        [jail.pid.to_string().as_str(), "1"]
    );
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", jail.pid)).unwrap();
    let after_comm = stat.rsplit_once(')').unwrap().1;
    let session: u32 = after_comm
        .split_whitespace()
        .nth(3)
        .unwrap()
        .parse()
        .unwrap();
    // SAFETY: getsid has no memory effects.
    assert_ne!(session as i32, unsafe { libc::getsid(0) });
    let null = std::fs::metadata("/dev/null").unwrap().rdev();
    for fd in 0..3 {
        let m = std::fs::metadata(format!("/proc/{}/fd/{fd}", jail.pid)).unwrap();
        assert_eq!(m.rdev(), null, "fd {fd}");
    }
    drop(conn);
    let cgroup = jail.cgroup.clone();
    drop(jail);
    assert!(!cgroup.exists(), "{} was not removed", cgroup.display());
    let _ = std::fs::remove_dir_all(&dir);
}
