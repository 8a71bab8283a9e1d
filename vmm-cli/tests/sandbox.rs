//! The sandbox: `vmm` is a static executable, runs (as `firecracker`) in an empty chroot as an
//! unprivileged uid with no environment, and its API socket serves only root and its own uid.
//!
//! The chroot and other-uid tests need root (mknod, chroot, setuid); elsewhere they say so and
//! pass. The chroot test boots the tiny PVH guest on this machine's /dev/kvm (tier 2).

use std::ffi::CString;
use std::io::{BufRead, BufReader};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{guest_file, scratch, Connection};

/// The uid and gid the chrooted VMM runs as.
const JAIL_ID: u32 = 1000;
/// A uid that is neither root nor the VMM's (`nobody`).
const OTHER_UID: u32 = 65534;

fn is_root() -> bool {
    // SAFETY: geteuid has no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A child process, killed on drop.
struct Running(Option<Child>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Running {
    fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("running")
    }

    /// Waits for `path` to appear; fails at once if the process ended first.
    fn wait_for(&mut self, path: &Path) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !path.exists() {
            if let Some(status) = self.child().try_wait().unwrap() {
                panic!(
                    "the VMM ended ({status}) before {} appeared",
                    path.display()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} never appeared",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the process (SIGTERM) and returns what it wrote.
    fn stop(mut self) -> Output {
        let child = self.0.take().expect("running");
        // SAFETY: kill sends a signal to our own child, which has not been waited for.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        child.wait_with_output().unwrap()
    }
}

/// `cmd.spawn()`, again while the binary is "busy" (ETXTBSY): a copy made by one test stays
/// open for writing in a child that another test thread forked meanwhile, until that child
/// execs.
fn spawn(cmd: &mut Command) -> Child {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            result => return result.unwrap(),
        }
    }
}

/// [`spawn`], waiting for the output.
fn output(cmd: &mut Command) -> Output {
    spawn(cmd.stdout(Stdio::piped()).stderr(Stdio::piped()))
        .wait_with_output()
        .unwrap()
}

/// The ELF file's program headers and dynamic section say it needs no loader and no shared
/// library: no PT_INTERP, no DT_NEEDED.
fn assert_static_elf(path: &Path) {
    let elf = std::fs::read(path).unwrap();
    let u16_at = |off: usize| u16::from_le_bytes(elf[off..off + 2].try_into().unwrap());
    let u32_at = |off: usize| u32::from_le_bytes(elf[off..off + 4].try_into().unwrap());
    let u64_at = |off: usize| u64::from_le_bytes(elf[off..off + 8].try_into().unwrap());
    assert_eq!(&elf[..4], b"\x7fELF", "{} is not ELF", path.display());
    assert_eq!(elf[4], 2, "not ELF64");
    assert_eq!(elf[5], 1, "not little-endian");
    let (phoff, phentsize, phnum) = (u64_at(0x20) as usize, u16_at(0x36), u16_at(0x38));
    const PT_DYNAMIC: u32 = 2;
    const PT_INTERP: u32 = 3;
    const DT_NEEDED: u64 = 1;
    for i in 0..usize::from(phnum) {
        let ph = phoff + i * usize::from(phentsize);
        match u32_at(ph) {
            PT_INTERP => {
                let (off, len) = (u64_at(ph + 8) as usize, u64_at(ph + 32) as usize);
                let interp = String::from_utf8_lossy(&elf[off..off + len]);
                panic!("{} has an ELF interpreter: {interp}", path.display());
            }
            PT_DYNAMIC => {
                let (off, len) = (u64_at(ph + 8) as usize, u64_at(ph + 32) as usize);
                for entry in (off..off + len).step_by(16) {
                    assert_ne!(
                        u64_at(entry),
                        DT_NEEDED,
                        "{} needs a shared library",
                        path.display()
                    );
                }
            }
            _ => {}
        }
    }
}

#[test]
fn vmm_is_a_static_executable() {
    assert_static_elf(Path::new(env!("CARGO_BIN_EXE_vmm")));
    // And `ldd`, where there is one, agrees.
    if let Ok(out) = Command::new("ldd").arg(env!("CARGO_BIN_EXE_vmm")).output() {
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            text.contains("statically linked") || text.contains("not a dynamic executable"),
            "ldd: {text}"
        );
    }
}

/// `cmd` runs chrooted in `root` as uid and gid `id`, with no supplementary groups.
fn jailed(cmd: &mut Command, root: &Path, id: u32) {
    let root = CString::new(root.as_os_str().as_bytes()).unwrap();
    let slash = CString::new("/").unwrap();
    // SAFETY: between fork and exec the closure makes only async-signal-safe system calls on
    // strings made before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let check = |rc: libc::c_int| {
                if rc == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            };
            check(libc::chroot(root.as_ptr()))?;
            check(libc::chdir(slash.as_ptr()))?;
            check(libc::setgroups(0, std::ptr::null()))?;
            check(libc::setgid(id))?;
            check(libc::setuid(id))
        });
    }
}

/// `cmd` runs as uid and gid `id` (outside any chroot).
fn as_user(cmd: &mut Command, id: u32) {
    // SAFETY: between fork and exec the closure makes only async-signal-safe system calls.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(id) != 0
                || libc::setuid(id) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A character device node at `path` for the same device as `host` (mknod), owned by `id`,
/// mode 0600.
fn device_node(path: &Path, host: &str, id: u32) {
    let rdev = std::fs::metadata(host).unwrap().rdev();
    let c_path = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: mknod reads the NUL-terminated path, which lives across the call.
    let rc = unsafe { libc::mknod(c_path.as_ptr(), libc::S_IFCHR | 0o600, rdev) };
    assert_eq!(rc, 0, "mknod: {}", std::io::Error::last_os_error());
    std::os::unix::fs::chown(path, Some(id), Some(id)).unwrap();
}

/// The chroot holds the binary (as `firecracker`), the kernel, /dev/kvm and an empty /run:
/// no /proc, /sys, /dev/null, /tmp, /etc, no libraries. The VMM runs there as uid 1000 with
/// an empty environment, is configured over its API socket from outside, boots the guest and
/// answers `GET /`.
#[test]
fn firecracker_runs_in_an_empty_chroot_as_an_unprivileged_user() {
    if !is_root() {
        eprintln!("skipped: making the chroot needs root");
        return;
    }
    let dir = scratch("sandbox-chroot");
    let root = dir.join("root");
    for sub in ["dev", "run"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(root.join("run"), Some(JAIL_ID), Some(JAIL_ID)).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_vmm"), root.join("firecracker")).unwrap();
    std::fs::copy(guest_file("tiny-pvh.elf"), root.join("kernel")).unwrap();
    std::fs::set_permissions(root.join("kernel"), std::fs::Permissions::from_mode(0o444)).unwrap();
    device_node(&root.join("dev/kvm"), "/dev/kvm", JAIL_ID);
    let listing: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for absent in ["proc", "sys", "tmp", "etc", "lib", "lib64", "usr"] {
        assert!(!listing.iter().any(|n| n == absent), "{listing:?}");
    }

    // Firecracker's default socket, /run/firecracker.socket, inside the chroot.
    let mut cmd = Command::new("/firecracker");
    cmd.env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    jailed(&mut cmd, &root, JAIL_ID);
    let mut vmm = Running(Some(spawn(&mut cmd)));
    let sock = root.join("run/firecracker.socket");
    vmm.wait_for(&sock);

    // The process is who it should be, and its socket is its own, for its owner only.
    let status = std::fs::read_to_string(format!("/proc/{}/status", vmm.child().id())).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(
        uid_line.split_whitespace().skip(1).collect::<Vec<_>>(),
        ["1000"; 4]
    );
    let environ = std::fs::read(format!("/proc/{}/environ", vmm.child().id())).unwrap();
    assert!(environ.is_empty(), "{}", String::from_utf8_lossy(&environ));
    let meta = std::fs::symlink_metadata(&sock).unwrap();
    assert_eq!(meta.uid(), JAIL_ID);
    assert_eq!(meta.mode() & 0o7777, 0o600);

    // Root on the host side is served.
    let mut conn = Connection::open(&sock);
    for (path, body) in [
        ("/boot-source", r#"{"kernel_image_path": "/kernel"}"#),
        (
            "/machine-config",
            r#"{"vcpu_count": 1, "mem_size_mib": 64}"#,
        ),
        ("/actions", r#"{"action_type": "InstanceStart"}"#),
    ] {
        let r = conn.call("PUT", path, Some(body));
        assert_eq!(r.status, 204, "PUT {path}: {}", r.body);
    }
    // The guest prints its marker on the serial console (the VMM's stdout); no request is
    // logged meanwhile, so no log line gets between its bytes.
    let stdout = vmm.child().stdout.take().unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains("GUEST-INIT-OK")) {
        match lines.recv_timeout(Duration::from_secs(120)) {
            Ok(line) => seen.push(line),
            Err(e) => panic!("no guest marker ({e}); stdout so far: {seen:?}"),
        }
    }

    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let r = conn.call("GET", "/", None);
        assert_eq!(r.status, 200, "{}", r.body);
        let info: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(info["app_name"], "Firecracker");
        if info["state"] == "Running" {
            break;
        }
        assert!(Instant::now() < deadline, "never Running: {info}");
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(conn);

    let out = vmm.stop();
    assert!(out.status.code().is_some(), "{out:?}");
    // SIGTERM ends it the usual way: the socket file is removed.
    assert!(!sock.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A copy of `vmm` that any uid can run (the build's folder may not be reachable for them).
fn vmm_copy(dir: &Path) -> PathBuf {
    let path = dir.join("vmm");
    std::fs::copy(env!("CARGO_BIN_EXE_vmm"), &path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// `vmm status` against `sock`, as uid `uid` (None: as this process).
fn status_as(vmm: &Path, sock: &Path, uid: Option<u32>) -> Output {
    let mut cmd = Command::new(vmm);
    cmd.arg("status").arg("--api-sock").arg(sock);
    if let Some(uid) = uid {
        as_user(&mut cmd, uid);
    }
    output(&mut cmd)
}

/// `vmm run --api-sock` (waiting to be configured), with `extra` flags.
fn api_only_vmm(vmm: &Path, sock: &Path, extra: &[&str]) -> Running {
    let mut child = Running(Some(spawn(
        Command::new(vmm)
            .arg("run")
            .arg("--api-sock")
            .arg(sock)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )));
    child.wait_for(sock);
    child
}

#[test]
fn the_api_socket_is_owner_only_and_serves_only_root_and_its_own_uid() {
    let dir = scratch("sandbox-socket");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let vmm = vmm_copy(&dir);

    // The default: 0600.
    let sock = dir.join("owner.sock");
    let server = api_only_vmm(&vmm, &sock, &[]);
    let meta = std::fs::symlink_metadata(&sock).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o600);
    let out = status_as(&vmm, &sock, None);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("Not started"));
    drop(server);

    // Still a file that is not a socket is never replaced.
    let file = dir.join("not-a-socket");
    std::fs::write(&file, "keep").unwrap();
    let out = output(
        Command::new(&vmm)
            .args(["run", "--api-sock"])
            .arg(&file)
            .stdin(Stdio::null()),
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("exists"),
        "{out:?}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep");

    if !is_root() {
        eprintln!("skipped: a client with another uid needs root to make");
        return;
    }
    // With the file open to everyone, the uid check alone keeps others out.
    let sock = dir.join("open.sock");
    let server = api_only_vmm(&vmm, &sock, &["--api-sock-mode", "0666"]);
    let meta = std::fs::symlink_metadata(&sock).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o666);
    let refused = status_as(&vmm, &sock, Some(OTHER_UID));
    assert!(!refused.status.success(), "{refused:?}");
    assert!(refused.stdout.is_empty(), "{refused:?}");
    // Root is served, after the refusal as before it.
    let out = status_as(&vmm, &sock, None);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("Not started"));
    let out = server.stop();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("API connection refused"))
        .collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(
        warnings[0].contains(&format!("uid {OTHER_UID}")),
        "{stderr}"
    );

    // With the default mode, another uid cannot even connect.
    let sock = dir.join("owner2.sock");
    let _server = api_only_vmm(&vmm, &sock, &[]);
    let refused = status_as(&vmm, &sock, Some(OTHER_UID));
    assert!(!refused.status.success(), "{refused:?}");
    drop(_server);
    let _ = std::fs::remove_dir_all(&dir);
}
