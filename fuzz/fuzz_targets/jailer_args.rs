//! The jailer's command line: argv vectors (NUL-separated words; the dictionary has its flags
//! and typical and hostile values: `..`, absolute where relative is wanted, line breaks),
//! parsed by clap as `vmm_cli::jail_args::JailerArgs` and checked by its `validate`. A scratch
//! folder holds a real exec file (`@S/bin/firecracker`) and a base folder for jails
//! (`@S/base`); `@S` in a word stands for the scratch folder.
//!
//! Checked:
//! - nothing panics; a refused command line has a first line with a message (clap) or is a
//!   one-line `JailError::Invalid` (validation);
//! - validation has no file system side effects: the scratch folder's tree and whether the
//!   given `--chroot-base-dir` exists are the same before and after;
//! - an accepted jail satisfies the documented rules: an id of 1 to 64 ASCII letters, digits
//!   and `-`; a canonical, regular exec file; a chroot folder that is exactly
//!   `<base>/<exec-name>/<id>/root`, absolute, without `..` or NUL, and inside the
//!   base; a non-empty relative parent cgroup of plain components; cgroup settings of the form
//!   `CONTROLLER.FILE=VALUE` with a one-line value; a `no-file` limit always present; a network
//!   namespace that exists.

#![no_main]

#[path = "common/argv.rs"]
mod argv;
#[path = "common/one_line.rs"]
mod one_line;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use clap::Parser;
use libfuzzer_sys::fuzz_target;
use vmm_cli::jail_args::{validate, JailError, JailerArgs, Rlimit, MAX_ID_LEN};

use argv::check_clap_error;
use one_line::assert_one_line;

/// The scratch folder: `bin/firecracker` (a regular file) and `base/` (an empty folder).
static SCRATCH: OnceLock<PathBuf> = OnceLock::new();

fn scratch() -> &'static Path {
    SCRATCH.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("jailer-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("bin")).expect("scratch folder");
        std::fs::create_dir_all(dir.join("base")).expect("scratch base folder");
        std::fs::write(dir.join("bin/firecracker"), b"#!/bin/true\n").expect("exec file");
        dir
    })
}

/// Every path under `dir`, sorted.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path.clone());
            }
            out.push(path);
        }
    }
    out.sort();
    out
}

fuzz_target!(|data: &[u8]| {
    let dir = scratch();
    let argv = argv::argv("jailer", data, &dir.to_string_lossy());
    let args = match JailerArgs::try_parse_from(&argv) {
        Ok(args) => args,
        Err(error) => {
            check_clap_error(&error);
            return;
        }
    };
    // The --chroot-base-dir given (before `--`: later words are the VMM's), or none.
    let flags = argv.iter().take_while(|w| *w != "--");
    let mut base = None;
    let mut words = flags.map(|w| w.as_encoded_bytes());
    while let Some(word) = words.next() {
        if word == b"--chroot-base-dir" {
            base = words.next().map(|v| PathBuf::from(OsStr::from_bytes(v)));
        } else if let Some(v) = word.strip_prefix(b"--chroot-base-dir=") {
            base = Some(PathBuf::from(OsStr::from_bytes(v)));
        }
    }
    let base_existed = base.as_ref().map(|b| b.exists());
    let before = tree(dir);
    let result = validate(args);
    assert_eq!(tree(dir), before, "validation changed the scratch folder");
    assert_eq!(
        base.as_ref().map(|b| b.exists()),
        base_existed,
        "validation created or removed the base folder"
    );
    let jail = match result {
        Ok(jail) => jail,
        Err(error) => {
            assert!(matches!(error, JailError::Invalid(_)), "{error:?}");
            assert_one_line(&error);
            return;
        }
    };
    let id = &jail.id;
    assert!(!id.is_empty() && id.len() <= MAX_ID_LEN, "{id:?}");
    assert!(
        id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'),
        "{id:?}"
    );
    assert!(jail.exec_file.is_absolute() && jail.exec_file.is_file());
    assert_eq!(
        std::fs::canonicalize(&jail.exec_file).ok().as_ref(),
        Some(&jail.exec_file)
    );
    assert_eq!(Some(jail.exec_name.as_os_str()), jail.exec_file.file_name());
    let chroot = &jail.chroot_dir;
    assert!(chroot.is_absolute(), "{chroot:?}");
    assert!(
        chroot
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_))),
        "{chroot:?}"
    );
    let text = chroot.as_os_str().as_encoded_bytes();
    assert!(!text.contains(&0), "{chroot:?}");
    let base = base.unwrap_or_else(|| PathBuf::from(vmm_cli::jail_args::DEFAULT_CHROOT_BASE));
    assert_eq!(
        chroot,
        &base.join(&jail.exec_name).join(id).join("root"),
        "the chroot folder"
    );
    assert!(chroot.starts_with(&base), "{chroot:?} outside {base:?}");
    let parent = &jail.parent_cgroup;
    assert!(!parent.as_os_str().is_empty());
    assert!(
        parent
            .components()
            .all(|c| matches!(c, Component::Normal(_))),
        "{parent:?}"
    );
    for (key, value) in &jail.cgroups {
        let (controller, file) = key.split_once('.').expect("CONTROLLER.FILE");
        assert!(!controller.is_empty() && !file.is_empty(), "{key:?}");
        assert!(!key.contains('/') && key != "." && key != "..", "{key:?}");
        assert!(!value.is_empty() && !value.contains('\n'), "{value:?}");
    }
    assert!(
        jail.rlimits.iter().any(|r| matches!(r, Rlimit::NoFile(_))),
        "{:?}",
        jail.rlimits
    );
    if let Some(netns) = &jail.netns {
        assert!(netns.exists(), "{netns:?}");
    }
});
