//! A Linux tap interface, the host end of virtio-net.
//!
//! Written by hand on `/dev/net/tun` ioctls: there is no well-kept crate that opens taps, and
//! the part we need is small. The tap is opened with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, so
//! every frame read or written starts with a 12-byte virtio-net header (the virtio 1.x layout,
//! `num_buffers` included) that carries checksum and segmentation offload information; the
//! device passes it through to and from the guest.
//!
//! The tap is not made persistent: opening a name that does not exist creates the interface,
//! and it disappears when the last descriptor on it closes (when the VMM exits). Opening the
//! name of an existing tap attaches to it, which is how a tap prepared by an administrator (and
//! owned by the VMM's user) is used without CAP_NET_ADMIN.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::NetBackend;

/// The clone device every tap is opened through.
const TUN_PATH: &str = "/dev/net/tun";

/// Size of the virtio-net header on the tap: the virtio 1.x header, with `num_buffers`.
pub const TAP_VNET_HDR_LEN: usize = 12;

/// Offload flags for [`Tap::set_offload`] (`TUNSETOFFLOAD`, linux/if_tun.h): which partially
/// checksummed or segmentation-offloaded frames the tap may hand to its reader (the guest).
pub mod offload {
    /// The reader takes frames whose checksum is still to be completed.
    pub const TUN_F_CSUM: u32 = libc::TUN_F_CSUM;
    /// The reader takes TCP-over-IPv4 segmentation offload (needs [`TUN_F_CSUM`]).
    pub const TUN_F_TSO4: u32 = libc::TUN_F_TSO4;
    /// The reader takes TCP-over-IPv6 segmentation offload (needs [`TUN_F_CSUM`]).
    pub const TUN_F_TSO6: u32 = libc::TUN_F_TSO6;
    /// The reader takes TSO frames with ECN (needs a TSO flag).
    pub const TUN_F_TSO_ECN: u32 = libc::TUN_F_TSO_ECN;
    /// The reader takes UDP fragmentation offload (needs [`TUN_F_CSUM`]).
    pub const TUN_F_UFO: u32 = libc::TUN_F_UFO;
}

/// Longest interface name Linux accepts (IFNAMSIZ less the terminating NUL).
pub const MAX_TAP_NAME_LEN: usize = libc::IFNAMSIZ - 1;

/// Errors of opening and configuring a tap.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name is not one Linux accepts for an interface.
    #[error("invalid tap name {name:?}: {reason}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `/dev/net/tun` could not be opened (no tun module, no permission).
    #[error("cannot open {TUN_PATH}")]
    OpenTun(#[source] io::Error),
    /// Creating or attaching to the tap failed.
    #[error("TUNSETIFF for tap '{name}' failed{hint}")]
    SetIff {
        /// The tap's name.
        name: String,
        /// The ioctl's error.
        #[source]
        source: io::Error,
        /// A likely reason, for the common errors (may be empty).
        hint: &'static str,
    },
    /// Setting the virtio-net header size failed.
    #[error("TUNSETVNETHDRSZ {size} for tap '{name}' failed")]
    SetVnetHdrSize {
        /// The tap's name.
        name: String,
        /// The header size asked for.
        size: usize,
        /// The ioctl's error.
        #[source]
        source: io::Error,
    },
    /// Setting the offload flags failed.
    #[error("TUNSETOFFLOAD {flags:#x} for tap '{name}' failed")]
    SetOffload {
        /// The tap's name.
        name: String,
        /// The flags asked for.
        flags: u32,
        /// The ioctl's error.
        #[source]
        source: io::Error,
    },
}

/// `struct ifreq` as TUNSETIFF reads and writes it: the name, then the flags (a `short` at the
/// start of the union). The padding brings it to the kernel's 40 bytes on 64-bit hosts (and
/// past its 32 on 32-bit hosts), so the kernel never reads beyond this struct.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// An open tap interface: frames are read and written on its descriptor, without blocking.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

/// Checks `name` the way the kernel's `dev_valid_name` does, so a bad name fails before any
/// syscall and with a clear reason.
pub fn validate_tap_name(name: &str) -> Result<(), TapError> {
    let invalid = |reason| {
        Err(TapError::InvalidName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return invalid("it is empty");
    }
    if name.len() > MAX_TAP_NAME_LEN {
        return invalid("it is longer than 15 bytes");
    }
    if name == "." || name == ".." {
        return invalid("'.' and '..' are not interface names");
    }
    if name.contains('\0') {
        return invalid("it contains a NUL byte");
    }
    if name.contains('/') || name.contains(':') {
        return invalid("it contains '/' or ':'");
    }
    if name.chars().any(char::is_whitespace) {
        return invalid("it contains whitespace");
    }
    Ok(())
}

impl Tap {
    /// Opens the tap `name`: attaches to an existing tap of that name, or creates it (creating
    /// needs CAP_NET_ADMIN). The descriptor is non-blocking and close-on-exec, and frames carry
    /// the 12-byte virtio-net header. No offloads are enabled until [`Tap::set_offload`].
    pub fn open(name: &str) -> Result<Tap, TapError> {
        validate_tap_name(name)?;
        // std opens with O_CLOEXEC already; O_NONBLOCK because the device must never wait.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_PATH)
            .map_err(TapError::OpenTun)?;

        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
            _pad: [0; 22],
        };
        // validate_tap_name bounded the length to 15, so the name and its NUL fit.
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`; `req` is a live, writable
        // IfReq at least as large as the kernel's struct, and `file` is an open tun descriptor.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF as _, &mut req) };
        if ret < 0 {
            let source = io::Error::last_os_error();
            let hint = match source.raw_os_error() {
                Some(libc::EPERM) => " (needs CAP_NET_ADMIN, or a tap owned by this user)",
                Some(libc::EBUSY) => " (it is in use by another process, or is not a tap)",
                Some(libc::EINVAL) => " (an interface of another type has that name)",
                _ => "",
            };
            return Err(TapError::SetIff {
                name: name.to_string(),
                source,
                hint,
            });
        }

        let size = TAP_VNET_HDR_LEN;
        let size_arg = size as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which points at a live
        // c_int; `file` is the tap's descriptor.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ as _, &size_arg) };
        if ret < 0 {
            return Err(TapError::SetVnetHdrSize {
                name: name.to_string(),
                size,
                source: io::Error::last_os_error(),
            });
        }

        // The kernel writes back the name it used (a "tap%d" template becomes "tap0").
        let len = req
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(req.name.len());
        let actual = String::from_utf8_lossy(&req.name[..len]).into_owned();
        Ok(Tap { file, name: actual })
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sets which offloaded frames the tap may hand to the guest ([`offload`] flags). The
    /// kernel refuses TSO without `TUN_F_CSUM` and ECN without a TSO flag.
    pub fn set_offload(&self, flags: u32) -> Result<(), TapError> {
        self.ioctl_offload(flags)
            .map_err(|source| TapError::SetOffload {
                name: self.name.clone(),
                flags,
                source,
            })
    }

    fn ioctl_offload(&self, flags: u32) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value (an unsigned long), not through a
        // pointer, so nothing in this process is read or written; the descriptor is the tap's.
        let ret = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD as _,
                libc::c_ulong::from(flags),
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl NetBackend for Tap {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // One read(2) on a tap returns exactly one frame.
        self.file.read(buf)
    }

    fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize> {
        // One write(2) on a tap sends exactly one frame.
        self.file.write(frame)
    }

    fn set_offload(&mut self, flags: u32) -> io::Result<()> {
        self.ioctl_offload(flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_before_any_syscall() {
        for bad in [
            "",
            "0123456789abcdef",
            "a/b",
            "a:b",
            "a b",
            "tab\t",
            "nul\0",
            ".",
            "..",
        ] {
            let e = validate_tap_name(bad).unwrap_err();
            assert!(matches!(e, TapError::InvalidName { .. }), "{bad:?}");
            // Opening never gets as far as /dev/net/tun.
            assert!(matches!(
                Tap::open(bad).unwrap_err(),
                TapError::InvalidName { .. }
            ));
        }
        for good in ["tap0", "t", "0123456789abcde", "vm-net.1", "tap%d"] {
            validate_tap_name(good).unwrap();
        }
        assert_eq!(
            validate_tap_name("a/b").unwrap_err().to_string(),
            "invalid tap name \"a/b\": it contains '/' or ':'"
        );
    }

    #[test]
    fn errors_say_what_failed() {
        let e = TapError::SetIff {
            name: "x".into(),
            source: io::Error::from_raw_os_error(libc::EPERM),
            hint: " (needs CAP_NET_ADMIN, or a tap owned by this user)",
        };
        // The OS error is the source (the CLI prints the chain), not part of the message.
        assert_eq!(
            e.to_string(),
            "TUNSETIFF for tap 'x' failed (needs CAP_NET_ADMIN, or a tap owned by this user)"
        );
        let source = std::error::Error::source(&e).unwrap().to_string();
        assert!(source.starts_with("Operation not permitted"), "{source}");
        let e = TapError::OpenTun(io::Error::from_raw_os_error(libc::ENOENT));
        assert_eq!(e.to_string(), "cannot open /dev/net/tun");
    }

    /// Whether interface `name` exists in the calling thread's network namespace.
    fn interface_in_thread_netns(name: &str) -> bool {
        // /proc/thread-self/net follows the thread's namespace (/sys/class/net follows the
        // namespace sysfs was mounted in, which is the host's).
        let dev = std::fs::read_to_string("/proc/thread-self/net/dev").expect("read net/dev");
        dev.lines()
            .filter_map(|l| l.split(':').next())
            .any(|iface| iface.trim() == name)
    }

    /// Creates a real tap, but only inside a fresh network namespace owned by one thread, so
    /// the machine's own interfaces are never touched. Where namespaces or the tun device are
    /// not available (not root, no /dev/net/tun) it says so and passes, except in CI (`CI` set),
    /// which runs as root: there it fails, so the tap path is never silently untested.
    #[test]
    fn creates_a_tap_inside_a_private_network_namespace() {
        let outcome = std::thread::spawn(|| -> Result<(), String> {
            // SAFETY: unshare only changes this thread's namespaces; no memory is involved.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(format!("unshare: {}", io::Error::last_os_error()));
            }
            let name = "vmmtest0";
            assert!(!interface_in_thread_netns(name));
            let mut tap = match Tap::open(name) {
                Ok(tap) => tap,
                Err(TapError::OpenTun(e)) => return Err(format!("no tun device: {e}")),
                Err(e) => panic!("{e}"),
            };
            assert_eq!(tap.name(), name);
            assert!(
                interface_in_thread_netns(name),
                "tap visible in its namespace"
            );
            tap.set_offload(offload::TUN_F_CSUM | offload::TUN_F_TSO4 | offload::TUN_F_TSO6)
                .unwrap();
            tap.set_offload(0).unwrap();
            // TSO without checksum offload is refused by the kernel, with a clear error.
            let e = tap.set_offload(offload::TUN_F_TSO4).unwrap_err();
            assert!(e
                .to_string()
                .starts_with("TUNSETOFFLOAD 0x2 for tap 'vmmtest0' failed"));
            // Non-blocking: the interface is down, nothing to read.
            let mut buf = [0u8; 64];
            let e = tap.read_frame(&mut buf).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
            // A second open of the same name attaches (one queue only: busy).
            assert!(matches!(
                Tap::open(name).unwrap_err(),
                TapError::SetIff { .. }
            ));
            drop(tap);
            assert!(!interface_in_thread_netns(name), "not persistent");
            Ok(())
        })
        .join()
        .expect("tap thread panicked");
        if let Err(why) = outcome {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI runs as root and must create a tap: {why}"
            );
            eprintln!("not run here: {why}");
        }
        // The host namespace never saw it.
        assert!(!interface_in_thread_netns("vmmtest0"));
    }
}
