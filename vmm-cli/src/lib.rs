//! The parts of the `vmm` command line that need neither KVM nor a process of their own: the
//! `firecracker` front end's flags and the jailer's flags with their validation. The binary
//! acts on them; the library lets tests and fuzz targets reach the parsing.

pub mod firecracker_args;
pub mod jail_args;

/// Runs `work` (parsing the command line) on a short-lived thread and returns its result.
///
/// clap's derived builders put large frames on the stack (`-Z emit-stack-sizes` on a release
/// build: `vmm disk`'s subcommands 29 KiB, `vmm run`'s arguments 22 KiB, the `firecracker`
/// arguments 24 KiB), ~60 KiB deep in all (several times that in a debug build). On the main thread those pages would stay resident
/// for the whole life of the VM; glibc gives an exited thread's stack pages back. Runs `work`
/// in place if no thread can be started; a panic in it goes on in the caller.
pub fn on_own_stack<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    let work = std::sync::Mutex::new(Some(work));
    let take = || work.lock().unwrap_or_else(|e| e.into_inner()).take();
    let outcome = std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("vmm-args".into())
            // As much as the main thread has: debug builds need several times the release frames,
            // and only the pages touched are memory.
            .stack_size(8 << 20)
            .spawn_scoped(scope, || take().map(|work| work()))
            .ok()
            .map(|thread| thread.join())
    });
    match outcome {
        Some(Ok(Some(value))) => value,
        Some(Err(panic)) => std::panic::resume_unwind(panic),
        // No thread: here, then.
        _ => take().map(|work| work()).expect("the work ran nowhere"),
    }
}

/// `--api-sock-mode`: file permission bits in octal (`600`, `0600` or `0o600`).
pub fn parse_socket_mode(text: &str) -> Result<u32, String> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if !digits.is_empty() && mode <= 0o7777 => Ok(mode),
        _ => Err(format!(
            "`{text}` is not a file mode in octal (0000 to 7777, such as 0600)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_modes_are_octal() {
        assert_eq!(parse_socket_mode("0600"), Ok(0o600));
        assert_eq!(parse_socket_mode("660"), Ok(0o660));
        assert_eq!(parse_socket_mode("0o666"), Ok(0o666));
        for bad in ["", "0o", "0800", "rw", "10000", "-600"] {
            assert!(parse_socket_mode(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn work_on_its_own_stack_returns_its_value_and_its_panic() {
        let caller = std::thread::current().id();
        let (value, ran_on) = on_own_stack(|| (42, std::thread::current().id()));
        assert_eq!(value, 42);
        assert_ne!(ran_on, caller, "another thread ran it");
        let panic = std::panic::catch_unwind(|| on_own_stack(|| panic!("bad argument")));
        let message = panic.unwrap_err();
        assert_eq!(message.downcast_ref::<&str>(), Some(&"bad argument"));
    }
}
