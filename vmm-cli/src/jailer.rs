//! `jailer`: Firecracker's jailer, in this binary (`vmm jail ...`, or the binary invoked under
//! the name `jailer`). It takes the jailer's flags, builds the jail in the jailer's order and
//! execs the VMM inside it:
//!
//! 1. validate every input (nothing is created before that: a bad input is one `jailer: ...`
//!    line and exit 1);
//! 2. close every file descriptor from 3 up and clear the environment;
//! 3. copy the exec file into `<base>/<exec-file-name>/<id>/root/` (a copy, never a link);
//! 4. join the network namespace (`--netns`), set the resource limits (`no-file` is 2048
//!    unless given), create and join the cgroup (v1 or v2);
//! 5. unshare the mount namespace, make every mount private, bind-mount the jail root onto
//!    itself and `pivot_root` into it (the old root is detached and removed);
//! 6. create `/dev`, `/dev/net`, `/run` and the device nodes `/dev/kvm`, `/dev/net/tun`,
//!    `/dev/urandom` (and `/dev/userfaultfd` when the host has it) with the host's numbers,
//!    owned by `--uid`/`--gid`;
//! 7. with `--daemonize`: fork twice around `setsid` and point stdio at the host's
//!    `/dev/null` (opened before the pivot); with `--new-pid-ns`: fork into a new PID namespace,
//!    where the VMM is pid 1;
//! 8. write `<exec-file-name>.pid` in the jail root, drop to `--uid`/`--gid` (no supplementary
//!    groups, no capabilities, `PR_SET_NO_NEW_PRIVS`) and exec `/<exec-file-name>`.
//!
//! When the exec file is named `firecracker` the VMM gets `--id ID --start-time-us ..
//! --start-time-cpu-us .. --parent-cpu-time-us ..` before the arguments given after `--`, as
//! Firecracker's jailer passes them (this binary's `firecracker` front end takes them). Under
//! any other name (`vmm` itself, whose subcommands do not take those flags) only the arguments
//! after `--` are passed.

use std::convert::Infallible;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use vmm_cli::jail_args::{cstr, validate, CgroupVersion, Jail, JailError, JailerArgs, Rlimit};

/// `Err(JailError::Step)` from `what` and the last OS error when `ret` is -1.
fn check(ret: libc::c_long, what: impl FnOnce() -> String) -> Result<libc::c_long, JailError> {
    if ret == -1 {
        Err(JailError::Step(what(), io::Error::last_os_error()))
    } else {
        Ok(ret)
    }
}

fn step<T>(r: io::Result<T>, what: impl FnOnce() -> String) -> Result<T, JailError> {
    r.map_err(|e| JailError::Step(what(), e))
}

/// Whether this process was started under the name `jailer`.
pub fn invoked_as_jailer(argv0: Option<&OsString>) -> bool {
    argv0
        .and_then(|a| Path::new(a).file_name().map(|n| n == "jailer"))
        .unwrap_or(false)
}

/// Runs the jailer on `args` (the first is the program name). Returns only on an error:
/// otherwise the process has become the VMM.
pub fn main(args: Vec<OsString>) -> ExitCode {
    let start_time_us = clock_us(libc::CLOCK_MONOTONIC);
    let start_cpu_us = clock_us(libc::CLOCK_PROCESS_CPUTIME_ID);
    let args = match JailerArgs::try_parse_from(args) {
        Ok(args) => args,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            eprintln!("jailer: {}", first.trim_start_matches("error: "));
            return ExitCode::from(1);
        }
    };
    let result = validate(args)
        .and_then(|jail| check_cgroups(&jail).map(|()| jail))
        .and_then(|jail| jail.run(start_time_us, start_cpu_us));
    match result {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("jailer: {e}");
            ExitCode::from(1)
        }
    }
}

/// A clock's time in microseconds.
fn clock_us(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1_000
}

/// Closes every file descriptor from 3 up.
fn close_inherited_fds() -> Result<(), JailError> {
    // SAFETY: close_range only closes descriptors; nothing in this process holds one >= 3
    // yet (the jailer has opened nothing).
    let ret = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if ret == 0 {
        return Ok(());
    }
    // Kernels before 5.9: close each one below the descriptor limit.
    // SAFETY: sysconf has no memory effects.
    let max = unsafe { libc::sysconf(libc::_SC_OPEN_MAX) }.clamp(1024, 1 << 20);
    for fd in 3..max as libc::c_int {
        // SAFETY: as above, no descriptor >= 3 belongs to anything in this process.
        unsafe { libc::close(fd) };
    }
    Ok(())
}

/// A host device's (major, minor), or `fallback` when the host has no such node.
fn host_device(path: &str, fallback: Option<(u32, u32)>) -> Option<(u32, u32)> {
    match fs::metadata(path) {
        Ok(m) if m.file_type().is_char_device() => {
            let rdev = m.rdev();
            Some((libc::major(rdev), libc::minor(rdev)))
        }
        _ => fallback,
    }
}

/// The steps that build a validated jail (all of them system calls).
trait Build {
    fn run(self, start_time_us: u64, start_cpu_us: u64) -> Result<Infallible, JailError>;
    fn copy_exec_file(&self) -> Result<(), JailError>;
    fn set_rlimits(&self) -> Result<(), JailError>;
    fn join_cgroup(&self) -> Result<(), JailError>;
    fn pivot_into_jail(&self) -> Result<(), JailError>;
    fn jailed_dir(&self, dir: &str) -> Result<(), JailError>;
    fn chown(&self, path: &Path) -> Result<(), JailError>;
    fn mknod_owned(&self, path: &str, major: u32, minor: u32) -> Result<(), JailError>;
    fn drop_privileges(&self) -> Result<(), JailError>;
}

impl Build for Jail {
    /// Builds the jail and execs the VMM; returns only on an error.
    fn run(self, start_time_us: u64, start_cpu_us: u64) -> Result<Infallible, JailError> {
        close_inherited_fds()?;
        let vars: Vec<OsString> = std::env::vars_os().map(|(k, _)| k).collect();
        for key in vars {
            // The jailer is single-threaded: nothing reads the environment meanwhile.
            std::env::remove_var(key);
        }
        self.copy_exec_file()?;
        if let Some(netns) = &self.netns {
            join_netns(netns)?;
        }
        self.set_rlimits()?;
        self.join_cgroup()?;
        // What is needed from the host's / before the pivot: device numbers and /dev/null.
        let devices = [
            ("/dev/kvm", host_device("/dev/kvm", Some((10, 232))), true),
            (
                "/dev/net/tun",
                host_device("/dev/net/tun", Some((10, 200))),
                true,
            ),
            (
                "/dev/urandom",
                host_device("/dev/urandom", Some((1, 9))),
                false,
            ),
            (
                "/dev/userfaultfd",
                host_device("/dev/userfaultfd", None),
                false,
            ),
        ];
        let dev_null = if self.daemonize {
            Some(step(
                OpenOptions::new().read(true).write(true).open("/dev/null"),
                || "open /dev/null".into(),
            )?)
        } else {
            None
        };
        self.pivot_into_jail()?;
        for dir in ["/", "/dev", "/dev/net", "/run"] {
            self.jailed_dir(dir)?;
        }
        for (path, numbers, required) in devices {
            let Some((major, minor)) = numbers else {
                continue;
            };
            match self.mknod_owned(path, major, minor) {
                Ok(()) => {}
                Err(e) if required => return Err(e),
                Err(e) => eprintln!("jailer: warning: {e}"),
            }
        }
        let mut parent_cpu_us = clock_us(libc::CLOCK_PROCESS_CPUTIME_ID) - start_cpu_us;
        if let Some(dev_null) = dev_null {
            // Double fork: the daemon is not a session leader, so it can never reacquire a
            // controlling terminal.
            fork_and_leave_parent()?;
            // SAFETY: setsid has no memory effects; this child is no group leader.
            check(unsafe { libc::setsid() }.into(), || "setsid".into())?;
            parent_cpu_us += clock_us(libc::CLOCK_PROCESS_CPUTIME_ID);
            fork_and_leave_parent()?;
            for fd in 0..3 {
                check(
                    // SAFETY: dup2 onto the standard descriptors, from one this function owns.
                    unsafe { libc::dup2(dev_null.as_raw_fd(), fd) }.into(),
                    || "redirect stdio to /dev/null".into(),
                )?;
            }
            drop(dev_null);
            parent_cpu_us += clock_us(libc::CLOCK_PROCESS_CPUTIME_ID);
        }
        let pid_file = PathBuf::from(format!("/{}.pid", self.exec_name.to_string_lossy()));
        if self.new_pid_ns {
            // The VMM would get SIGHUP when a session-leading jailer exits: give it its own
            // session then.
            // SAFETY: getsid and getpid have no memory effects.
            let leader = unsafe { libc::getsid(0) == libc::getpid() };
            // SAFETY: unshare has no memory effects; the next child is pid 1 of the new
            // namespace.
            check(unsafe { libc::unshare(libc::CLONE_NEWPID) }.into(), || {
                "unshare the PID namespace".into()
            })?;
            // SAFETY: the jailer is single-threaded, so the child may run anything.
            let pid = check(unsafe { libc::fork() }.into(), || "fork".into())?;
            if pid != 0 {
                let written = write_pid_file(&pid_file, pid as i32);
                if let Err(e) = written {
                    eprintln!("jailer: {e}");
                    // SAFETY: _exit ends this process at once.
                    unsafe { libc::_exit(1) };
                }
                // SAFETY: as above.
                unsafe { libc::_exit(0) };
            }
            if leader {
                // SAFETY: setsid has no memory effects.
                check(unsafe { libc::setsid() }.into(), || "setsid".into())?;
            }
        } else {
            // SAFETY: getpid has no memory effects.
            write_pid_file(&pid_file, unsafe { libc::getpid() })?;
        }
        self.drop_privileges()?;
        let mut command = std::process::Command::new(Path::new("/").join(&self.exec_name));
        command.env_clear();
        if self.exec_name == "firecracker" {
            let start_cpu = clock_us(libc::CLOCK_PROCESS_CPUTIME_ID);
            command
                .arg("--id")
                .arg(&self.id)
                .arg("--start-time-us")
                .arg(start_time_us.to_string())
                .arg("--start-time-cpu-us")
                .arg(start_cpu.to_string())
                .arg("--parent-cpu-time-us")
                .arg(parent_cpu_us.to_string());
        }
        command.args(&self.vmm_args);
        let e = command.exec();
        Err(JailError::Step(
            format!("exec /{}", self.exec_name.to_string_lossy()),
            e,
        ))
    }

    /// Copies the exec file to `<chroot>/<exec-name>`, root's and read-only to the VMM, never
    /// following a link left in the jail.
    fn copy_exec_file(&self) -> Result<(), JailError> {
        let dir = &self.chroot_dir;
        step(fs::create_dir_all(dir), || {
            format!("create {}", dir.display())
        })?;
        let dst = dir.join(&self.exec_name);
        match fs::remove_file(&dst) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(JailError::Step(format!("remove {}", dst.display()), e)),
        }
        let mut src = step(File::open(&self.exec_file), || {
            format!("open {}", self.exec_file.display())
        })?;
        let mut out = step(
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o755)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&dst),
            || format!("create {}", dst.display()),
        )?;
        step(io::copy(&mut src, &mut out), || {
            format!("copy {} to {}", self.exec_file.display(), dst.display())
        })?;
        Ok(())
    }

    fn set_rlimits(&self) -> Result<(), JailError> {
        for limit in &self.rlimits {
            let (resource, value, name) = match *limit {
                Rlimit::NoFile(n) => (libc::RLIMIT_NOFILE, n, "no-file"),
                Rlimit::FileSize(n) => (libc::RLIMIT_FSIZE, n, "fsize"),
            };
            let rlim = libc::rlimit {
                rlim_cur: value,
                rlim_max: value,
            };
            // SAFETY: `rlim` is a valid rlimit for the call to read.
            check(unsafe { libc::setrlimit(resource, &rlim) }.into(), || {
                format!("set the {name} limit to {value}")
            })?;
        }
        Ok(())
    }

    /// Creates the cgroup, writes the `--cgroup` values and moves this process into it.
    fn join_cgroup(&self) -> Result<(), JailError> {
        let mounts = step(fs::read_to_string("/proc/mounts"), || {
            "read /proc/mounts".into()
        })?;
        // SAFETY: getpid has no memory effects.
        let pid = unsafe { libc::getpid() }.to_string();
        match self.cgroup_version {
            CgroupVersion::V2 => {
                let Some(root) = cgroup2_root(&mounts) else {
                    return Err(JailError::Invalid(
                        "--cgroup-version 2: no cgroup2 file system is mounted".into(),
                    ));
                };
                let parent = root.join(&self.parent_cgroup);
                if self.cgroups.is_empty() {
                    // Firecracker's rule: join a parent cgroup that exists, create nothing.
                    if parent.is_dir() {
                        write_file(&parent.join("cgroup.procs"), &pid)?;
                    }
                    return Ok(());
                }
                // Enable each controller from the root down to the parent.
                let mut controllers: Vec<&str> = self
                    .cgroups
                    .iter()
                    .filter_map(|(k, _)| k.split('.').next())
                    .filter(|c| *c != "cgroup")
                    .collect();
                controllers.dedup();
                let mut level = root.clone();
                let mut levels = vec![root.clone()];
                for c in self.parent_cgroup.components() {
                    level.push(c);
                    levels.push(level.clone());
                }
                for (i, dir) in levels.iter().enumerate() {
                    if i > 0 {
                        create_dir(dir)?;
                    }
                    for c in &controllers {
                        write_file(&dir.join("cgroup.subtree_control"), &format!("+{c}"))?;
                    }
                }
                let dir = parent.join(&self.id);
                create_dir(&dir)?;
                for (key, value) in &self.cgroups {
                    write_file(&dir.join(key), value)?;
                }
                write_file(&dir.join("cgroup.procs"), &pid)
            }
            CgroupVersion::V1 => {
                let mut dirs: Vec<PathBuf> = Vec::new();
                for (key, value) in &self.cgroups {
                    let controller = key.split('.').next().unwrap_or_default();
                    let Some(mount) = cgroup1_mount(&mounts, controller) else {
                        return Err(JailError::Invalid(format!(
                            "--cgroup {key}: no cgroup v1 hierarchy has the {controller} controller"
                        )));
                    };
                    let dir = mount.join(&self.parent_cgroup).join(&self.id);
                    if !dirs.contains(&dir) {
                        let mut level = mount.clone();
                        for c in self.parent_cgroup.join(&self.id).components() {
                            let parent = level.clone();
                            level.push(c);
                            create_dir(&level)?;
                            if controller == "cpuset" {
                                inherit_cpuset(&parent, &level)?;
                            }
                        }
                        dirs.push(dir.clone());
                    }
                    write_file(&dir.join(key), value)?;
                }
                for dir in dirs {
                    write_file(&dir.join("tasks"), &pid)?;
                }
                Ok(())
            }
        }
    }

    /// A new mount namespace whose root is the jail's root.
    fn pivot_into_jail(&self) -> Result<(), JailError> {
        let root = cstr(&self.chroot_dir)?;
        // SAFETY: unshare has no memory effects.
        check(unsafe { libc::unshare(libc::CLONE_NEWNS) }.into(), || {
            "unshare the mount namespace".into()
        })?;
        check(
            // SAFETY: the strings are NUL-terminated and live through the call; NULLs are allowed
            // for the source, type and data of a propagation change.
            unsafe {
                libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_PRIVATE | libc::MS_REC,
                    std::ptr::null(),
                )
            }
            .into(),
            || "make every mount private".into(),
        )?;
        check(
            // SAFETY: as above; a bind mount of the jail root onto itself makes it a mount point,
            // as pivot_root wants.
            unsafe {
                libc::mount(
                    root.as_ptr(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                )
            }
            .into(),
            || format!("bind-mount {} onto itself", self.chroot_dir.display()),
        )?;
        step(std::env::set_current_dir(&self.chroot_dir), || {
            format!("chdir {}", self.chroot_dir.display())
        })?;
        let old_root = Path::new("old_root");
        if !old_root.exists() {
            step(fs::create_dir(old_root), || "create old_root".into())?;
        }
        check(
            // SAFETY: both paths are NUL-terminated literals.
            unsafe { libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c"old_root".as_ptr()) },
            || format!("pivot_root into {}", self.chroot_dir.display()),
        )?;
        check(
            // SAFETY: as above.
            unsafe { libc::umount2(c"old_root".as_ptr(), libc::MNT_DETACH) }.into(),
            || "detach the old root".into(),
        )?;
        step(fs::remove_dir("old_root"), || "remove old_root".into())?;
        // SAFETY: a NUL-terminated literal.
        check(unsafe { libc::chroot(c".".as_ptr()) }.into(), || {
            "chroot".into()
        })?;
        step(std::env::set_current_dir("/"), || "chdir /".into())
    }

    /// A directory in the jail, mode 0700, owned by the VMM's user.
    fn jailed_dir(&self, dir: &str) -> Result<(), JailError> {
        let path = Path::new(dir);
        if !path.is_dir() {
            step(fs::create_dir_all(path), || format!("create {dir}"))?;
        }
        step(
            fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o700)),
            || format!("chmod {dir}"),
        )?;
        self.chown(path)
    }

    fn chown(&self, path: &Path) -> Result<(), JailError> {
        step(
            std::os::unix::fs::lchown(path, Some(self.uid), Some(self.gid)),
            || format!("chown {} to {}:{}", path.display(), self.uid, self.gid),
        )
    }

    /// A character device node in the jail, read-write for the VMM's user only.
    fn mknod_owned(&self, path: &str, major: u32, minor: u32) -> Result<(), JailError> {
        let c = cstr(Path::new(path))?;
        let _ = fs::remove_file(path);
        check(
            // SAFETY: `c` is NUL-terminated and lives through the call.
            unsafe {
                libc::mknod(
                    c.as_ptr(),
                    libc::S_IFCHR | libc::S_IRUSR | libc::S_IWUSR,
                    libc::makedev(major, minor),
                )
            }
            .into(),
            || format!("mknod {path} ({major}:{minor})"),
        )?;
        self.chown(Path::new(path))
    }

    /// No supplementary groups, the VMM's gid and uid (real, effective and saved), no
    /// capabilities left in any set, and no way to gain privileges by exec.
    fn drop_privileges(&self) -> Result<(), JailError> {
        for cap in 0..64 {
            // SAFETY: prctl with integer arguments; EINVAL past the last capability.
            if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
                break;
            }
        }
        // SAFETY: prctl with integer arguments.
        unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            )
        };
        check(
            // SAFETY: an empty group list; the pointer is not read.
            unsafe { libc::setgroups(0, std::ptr::null()) }.into(),
            || "setgroups([])".into(),
        )?;
        let (uid, gid) = (self.uid, self.gid);
        // SAFETY: setresgid has no memory effects.
        check(unsafe { libc::setresgid(gid, gid, gid) }.into(), || {
            format!("setresgid({gid})")
        })?;
        // SAFETY: setresuid has no memory effects.
        check(unsafe { libc::setresuid(uid, uid, uid) }.into(), || {
            format!("setresuid({uid})")
        })?;
        // capset(2) with version 3 headers: two data words, all zero.
        let mut header = [0x2008_0522u32, 0];
        let data = [0u32; 6];
        check(
            // SAFETY: `header` and `data` are the layout capset reads (struct
            // __user_cap_header_struct and two __user_cap_data_struct).
            unsafe { libc::syscall(libc::SYS_capset, header.as_mut_ptr(), data.as_ptr()) },
            || "clear the capabilities".into(),
        )?;
        check(
            // SAFETY: prctl with integer arguments.
            unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) }.into(),
            || "PR_SET_NO_NEW_PRIVS".into(),
        )?;
        Ok(())
    }
}

/// The first cgroup2 mount in `/proc/mounts` text.
fn cgroup2_root(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
    })
}

/// The cgroup v1 mount that has `controller`, in `/proc/mounts` text.
fn cgroup1_mount(mounts: &str, controller: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&"cgroup")
            && f.get(3)
                .is_some_and(|o| o.split(',').any(|o| o == controller)))
        .then(|| PathBuf::from(f[1]))
    })
}

/// Refuses `--cgroup` files whose controller this host does not offer in the chosen
/// hierarchy, before anything is created.
fn check_cgroups(jail: &Jail) -> Result<(), JailError> {
    if jail.cgroups.is_empty() && jail.cgroup_version == CgroupVersion::V1 {
        return Ok(());
    }
    let mounts = step(fs::read_to_string("/proc/mounts"), || {
        "read /proc/mounts".into()
    })?;
    let controllers = jail.cgroups.iter().filter_map(|(k, _)| k.split('.').next());
    match jail.cgroup_version {
        CgroupVersion::V1 => {
            for c in controllers {
                if cgroup1_mount(&mounts, c).is_none() {
                    return Err(JailError::Invalid(format!(
                        "--cgroup {c}.*: no cgroup v1 hierarchy has the {c} controller"
                    )));
                }
            }
        }
        CgroupVersion::V2 => {
            let Some(root) = cgroup2_root(&mounts) else {
                return Err(JailError::Invalid(
                    "--cgroup-version 2: no cgroup2 file system is mounted".into(),
                ));
            };
            let available = fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
            for c in controllers.filter(|c| *c != "cgroup") {
                if !available.split_whitespace().any(|a| a == c) {
                    return Err(JailError::Invalid(format!(
                        "--cgroup {c}.*: the cgroup v2 hierarchy at {} has no {c} controller",
                        root.display()
                    )));
                }
            }
        }
    }
    Ok(())
}

fn join_netns(path: &Path) -> Result<(), JailError> {
    let file = step(File::open(path), || format!("open {}", path.display()))?;
    check(
        // SAFETY: `file` is an open descriptor; setns has no memory effects.
        unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) }.into(),
        || format!("join the network namespace {}", path.display()),
    )?;
    Ok(())
}

/// Forks; the parent exits at once, the child returns.
fn fork_and_leave_parent() -> Result<(), JailError> {
    // SAFETY: the jailer is single-threaded, so the child may run anything.
    let pid = check(unsafe { libc::fork() }.into(), || "fork".into())?;
    if pid != 0 {
        // SAFETY: _exit ends this process at once.
        unsafe { libc::_exit(0) };
    }
    Ok(())
}

fn create_dir(dir: &Path) -> Result<(), JailError> {
    match fs::create_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
            Err(JailError::Step(format!("create {}", dir.display()), e))
        }
        _ => Ok(()),
    }
}

fn write_file(path: &Path, value: &str) -> Result<(), JailError> {
    step(
        OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|mut f| f.write_all(value.as_bytes())),
        || format!("write {value:?} to {}", path.display()),
    )
}

/// A new cpuset cgroup has no CPUs or memory nodes: it gets its parent's.
fn inherit_cpuset(parent: &Path, dir: &Path) -> Result<(), JailError> {
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let current = fs::read_to_string(dir.join(file)).unwrap_or_default();
        if current.trim().is_empty() {
            let value = step(fs::read_to_string(parent.join(file)), || {
                format!("read {}", parent.join(file).display())
            })?;
            write_file(&dir.join(file), value.trim())?;
        }
    }
    Ok(())
}

/// Writes `<exec-name>.pid` in the jail root (a new file; a link left there is not followed).
fn write_pid_file(path: &Path, pid: i32) -> Result<(), JailError> {
    let _ = fs::remove_file(path);
    let mut file = step(
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path),
        || format!("create {}", path.display()),
    )?;
    step(file.write_all(pid.to_string().as_bytes()), || {
        format!("write {}", path.display())
    })
}
