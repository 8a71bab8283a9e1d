//! The jailer's command line and its validation: every check that happens before anything is
//! created (the binary's `jailer` module then builds the jail from a [`Jail`]). Validation only
//! reads the file system (the exec file, the base folder, the network namespace), so it can be
//! tested and fuzzed without a process.

use std::ffi::{CString, OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use clap::Parser;

/// Where jails are built unless `--chroot-base-dir` says otherwise.
pub const DEFAULT_CHROOT_BASE: &str = "/srv/jailer";
/// The longest `--id`.
pub const MAX_ID_LEN: usize = 64;
/// `no-file` when no `--resource-limit no-file=N` is given (Firecracker's default).
pub const DEFAULT_NO_FILE: u64 = 2048;

/// Firecracker's jailer flags.
#[derive(Parser, Debug)]
#[command(
    name = "jailer",
    version,
    about = "Firecracker's jailer: builds a chroot jail (namespaces, cgroup, an unprivileged uid) \
             and execs the VMM in it"
)]
pub struct JailerArgs {
    /// The VM's unique id: letters, digits and '-', at most 64.
    #[arg(long)]
    id: String,
    /// The VMM binary; it is copied into the jail and the copy is executed.
    #[arg(long, value_name = "PATH")]
    exec_file: PathBuf,
    /// The user the VMM runs as.
    #[arg(long)]
    uid: u32,
    /// The group the VMM runs as.
    #[arg(long)]
    gid: u32,
    /// Where jails are built: `<base>/<exec-file-name>/<id>/root`.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_CHROOT_BASE)]
    chroot_base_dir: PathBuf,
    /// A network namespace to join (a path such as /var/run/netns/NAME).
    #[arg(long, value_name = "PATH")]
    netns: Option<PathBuf>,
    /// Detach: new session, stdio on /dev/null.
    #[arg(long)]
    daemonize: bool,
    /// Run the VMM as pid 1 of a new PID namespace.
    #[arg(long)]
    new_pid_ns: bool,
    /// A cgroup file and its value, e.g. `cpuset.cpus=0` (repeatable).
    #[arg(long = "cgroup", value_name = "FILE=VALUE")]
    cgroups: Vec<String>,
    /// The cgroup hierarchy: 1 (per-controller mounts) or 2 (the unified one).
    #[arg(long, value_name = "1|2", default_value = "1")]
    cgroup_version: String,
    /// The cgroup (a relative path) under which `<id>` is created; default: the exec
    /// file's name.
    #[arg(long, value_name = "PATH")]
    parent_cgroup: Option<PathBuf>,
    /// `no-file=N` or `fsize=N` (repeatable).
    #[arg(long = "resource-limit", value_name = "RESOURCE=VALUE")]
    resource_limits: Vec<String>,
    /// The VMM's own arguments, after `--`.
    #[arg(last = true, value_name = "VMM_ARGS")]
    vmm_args: Vec<OsString>,
}

/// Why a jail could not be built.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// Refused input: nothing was created.
    #[error("{0}")]
    Invalid(String),
    /// A step failed: what it was doing, and the system's error.
    #[error("{0}: {1}")]
    Step(String, io::Error),
}

/// `path` as a C string; a NUL byte in it is refused.
pub fn cstr(path: &Path) -> Result<CString, JailError> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| JailError::Invalid(format!("{path:?}: a NUL byte in the path")))
}

/// Which cgroup hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// Per-controller hierarchies.
    V1,
    /// The unified hierarchy.
    V2,
}

/// A resource limit.
#[derive(Debug, Clone, Copy)]
pub enum Rlimit {
    /// `RLIMIT_NOFILE`: open file descriptors.
    NoFile(u64),
    /// `RLIMIT_FSIZE`: the largest file the VMM may write, bytes.
    FileSize(u64),
}

/// Everything the jail is built from, validated.
#[derive(Debug)]
pub struct Jail {
    /// The VM's id (checked by [`valid_id`]).
    pub id: String,
    /// The exec file, canonical (a regular file).
    pub exec_file: PathBuf,
    /// The exec file's name: the jail's copy is `/<exec_name>`.
    pub exec_name: OsString,
    /// The user the VMM runs as.
    pub uid: u32,
    /// The group the VMM runs as.
    pub gid: u32,
    /// `<base>/<exec_name>/<id>/root` (absolute, no `..`, no NUL).
    pub chroot_dir: PathBuf,
    /// A network namespace to join (it existed when validated).
    pub netns: Option<PathBuf>,
    /// Detach from the terminal.
    pub daemonize: bool,
    /// Run the VMM as pid 1 of a new PID namespace.
    pub new_pid_ns: bool,
    /// The cgroup hierarchy.
    pub cgroup_version: CgroupVersion,
    /// The parent cgroup: a relative path of normal components only.
    pub parent_cgroup: PathBuf,
    /// `CONTROLLER.FILE` and the value written to it.
    pub cgroups: Vec<(String, String)>,
    /// The resource limits, `no-file` always among them.
    pub rlimits: Vec<Rlimit>,
    /// The VMM's own arguments.
    pub vmm_args: Vec<OsString>,
}

/// Whether `id` is a safe VM id: 1 to 64 letters, digits and '-'.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Checks every input; creates nothing.
pub fn validate(args: JailerArgs) -> Result<Jail, JailError> {
    let invalid = |s: String| Err(JailError::Invalid(s));
    if !valid_id(&args.id) {
        return invalid(format!(
            "invalid --id {:?}: use 1 to {MAX_ID_LEN} letters, digits and '-'",
            args.id
        ));
    }
    let exec_file = match fs::canonicalize(&args.exec_file) {
        Ok(p) => p,
        Err(e) => return invalid(format!("--exec-file {:?}: {e}", args.exec_file)),
    };
    match fs::metadata(&exec_file) {
        Ok(m) if m.is_file() => {}
        Ok(_) => {
            return invalid(format!(
                "--exec-file {:?}: not a regular file",
                args.exec_file
            ))
        }
        Err(e) => return invalid(format!("--exec-file {:?}: {e}", args.exec_file)),
    }
    let Some(exec_name) = exec_file.file_name().map(OsStr::to_os_string) else {
        return invalid(format!("--exec-file {exec_file:?}: no file name"));
    };
    let base = &args.chroot_base_dir;
    if !base.is_absolute() || base.components().any(|c| c == Component::ParentDir) {
        return invalid(format!(
            "--chroot-base-dir {base:?}: must be an absolute path without '..'"
        ));
    }
    if base.exists() && !base.is_dir() {
        return invalid(format!("--chroot-base-dir {base:?}: not a directory"));
    }
    let chroot_dir = base.join(&exec_name).join(&args.id).join("root");
    cstr(&chroot_dir)?;
    if let Some(netns) = &args.netns {
        if let Err(e) = fs::metadata(netns) {
            return invalid(format!("--netns {netns:?}: {e}"));
        }
    }
    let cgroup_version = match args.cgroup_version.as_str() {
        "1" => CgroupVersion::V1,
        "2" => CgroupVersion::V2,
        other => return invalid(format!("invalid --cgroup-version {other:?}: use 1 or 2")),
    };
    let parent_cgroup = args
        .parent_cgroup
        .clone()
        .unwrap_or_else(|| PathBuf::from(&exec_name));
    if parent_cgroup.as_os_str().is_empty()
        || !parent_cgroup
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
    {
        return invalid(format!(
            "invalid --parent-cgroup {parent_cgroup:?}: use a relative path without '..'"
        ));
    }
    let mut cgroups = Vec::new();
    for arg in &args.cgroups {
        let Some((key, value)) = arg.split_once('=') else {
            return invalid(format!("invalid --cgroup {arg:?}: use FILE=VALUE"));
        };
        let good_key = key.split_once('.').is_some_and(|(c, f)| {
            !c.is_empty()
                && !f.is_empty()
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
        });
        if !good_key || value.is_empty() || value.contains('\n') {
            return invalid(format!(
                "invalid --cgroup {arg:?}: use CONTROLLER.FILE=VALUE (e.g. cpuset.cpus=0)"
            ));
        }
        cgroups.push((key.to_string(), value.to_string()));
    }
    let mut rlimits = Vec::new();
    for arg in &args.resource_limits {
        let parsed = arg
            .split_once('=')
            .and_then(|(name, value)| Some((name, value.parse::<u64>().ok()?)));
        match parsed {
            Some(("no-file", n)) => rlimits.push(Rlimit::NoFile(n)),
            Some(("fsize", n)) => rlimits.push(Rlimit::FileSize(n)),
            _ => {
                return invalid(format!(
                    "invalid --resource-limit {arg:?}: use no-file=N or fsize=N"
                ))
            }
        }
    }
    if !rlimits.iter().any(|r| matches!(r, Rlimit::NoFile(_))) {
        rlimits.push(Rlimit::NoFile(DEFAULT_NO_FILE));
    }
    Ok(Jail {
        id: args.id,
        exec_file,
        exec_name,
        uid: args.uid,
        gid: args.gid,
        chroot_dir,
        netns: args.netns,
        daemonize: args.daemonize,
        new_pid_ns: args.new_pid_ns,
        cgroup_version,
        parent_cgroup,
        cgroups,
        rlimits,
        vmm_args: args.vmm_args,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Jail, String> {
        let mut argv = vec!["jailer"];
        argv.extend_from_slice(args);
        let args = JailerArgs::try_parse_from(argv).map_err(|e| e.to_string())?;
        validate(args).map_err(|e| e.to_string())
    }

    fn base_args<'a>(id: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
        let mut v = vec![
            "--id",
            id,
            "--exec-file",
            "/bin/sh",
            "--uid",
            "1",
            "--gid",
            "1",
        ];
        v.extend_from_slice(extra);
        v
    }

    #[test]
    fn ids() {
        assert!(valid_id("551e7604-e35c-42b3-b825-416853441234"));
        assert!(valid_id(&"a".repeat(64)));
        assert!(!valid_id(&"a".repeat(65)));
        assert!(!valid_id(""));
        assert!(!valid_id("a/b"));
        assert!(!valid_id(".."));
        assert!(!valid_id("a_b"));
    }

    #[test]
    fn flags_and_defaults() {
        let jail = parse(&base_args(
            "vm-1",
            &[
                "--cgroup",
                "cpuset.cpus=0",
                "--cgroup",
                "pids.max=100",
                "--resource-limit",
                "fsize=1000",
                "--",
                "--api-sock",
                "/run/fc.sock",
            ],
        ))
        .unwrap();
        let name = jail.exec_name.clone();
        assert_eq!(
            jail.chroot_dir,
            Path::new("/srv/jailer").join(&name).join("vm-1/root")
        );
        assert_eq!(jail.parent_cgroup, PathBuf::from(&name));
        assert_eq!(jail.cgroup_version, CgroupVersion::V1);
        assert_eq!(jail.cgroups.len(), 2);
        assert!(matches!(
            jail.rlimits[..],
            [Rlimit::FileSize(1000), Rlimit::NoFile(DEFAULT_NO_FILE)]
        ));
        assert_eq!(jail.vmm_args, ["--api-sock", "/run/fc.sock"]);
    }

    #[test]
    fn refusals() {
        for (extra, want) in [
            (vec!["--cgroup", "pids"], "--cgroup"),
            (vec!["--cgroup", "../x.y=1"], "--cgroup"),
            (vec!["--cgroup-version", "3"], "--cgroup-version"),
            (vec!["--parent-cgroup", "../a"], "--parent-cgroup"),
            (vec!["--parent-cgroup", "/a"], "--parent-cgroup"),
            (vec!["--resource-limit", "nproc=1"], "--resource-limit"),
            (vec!["--resource-limit", "fsize=x"], "--resource-limit"),
            (vec!["--chroot-base-dir", "rel"], "--chroot-base-dir"),
            (vec!["--netns", "/nonexistent/netns"], "--netns"),
        ] {
            let err = parse(&base_args("vm", &extra)).unwrap_err();
            assert!(err.contains(want), "{extra:?}: {err}");
        }
        // Paths are quoted: a line break in one cannot split the one-line message.
        for (extra, want) in [
            (vec!["--chroot-base-dir", "/a/../b\nc"], "--chroot-base-dir"),
            (vec!["--netns", "/no\nnetns"], "--netns"),
            (vec!["--parent-cgroup", "/a\nb"], "--parent-cgroup"),
        ] {
            let err = parse(&base_args("vm", &extra)).unwrap_err();
            assert!(
                err.contains(want) && !err.contains('\n'),
                "{extra:?}: {err}"
            );
        }
        let err = parse(&[
            "--id",
            "vm",
            "--exec-file",
            "/no\nfile",
            "--uid",
            "1",
            "--gid",
            "1",
        ]);
        assert!(!err.unwrap_err().contains('\n'));
        let err = parse(&["--id", "a", "--exec-file", "/", "--uid", "1", "--gid", "1"]);
        assert!(err.unwrap_err().contains("not a regular file"));
    }
}
