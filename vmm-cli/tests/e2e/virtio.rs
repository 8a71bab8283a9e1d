//! Tier 3 for the virtio devices: block (root disk, data disks, read-only, flush durability),
//! net (ping and a TCP stream in a private network namespace), vsock (both directions through
//! the Unix socket), rng and balloon, and devices announced on the command line with acpi=off.
//!
//! Guest tests that busybox cannot do (vsock, the TCP stream, blkwrite, balloon) come from the
//! test initramfs that scripts/build-test-initramfs.sh layers over the shared one.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{boot_and_test, boot_and_test_in, guest, Running, BOOT_TIMEOUT};

/// The first-MiB hash the shared `blk` test always prints.
const BLK_PATTERN_SHA256: &str = "49c7e2034ab700004e03e6fec79c2a9241a44a6fa907e28d128395a2c3276fee";

pub(crate) fn test_initramfs() -> String {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-guest/initramfs.cpio.gz");
    assert!(
        path.exists(),
        "{} is missing: run scripts/build-test-initramfs.sh (scripts/e2e.sh does)",
        path.display()
    );
    path.to_string_lossy().into_owned()
}

/// A scratch directory removed at the end of the test.
pub(crate) struct Scratch(PathBuf);

impl Scratch {
    pub(crate) fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("vmm-e2e-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// A zero-filled file of `bytes`.
    pub(crate) fn zeros(&self, name: &str, bytes: u64) -> String {
        let path = self.path(name);
        std::fs::File::create(&path)
            .unwrap()
            .set_len(bytes)
            .unwrap();
        path.to_string_lossy().into_owned()
    }

    /// A copy of a shared guest image (never written in place).
    fn copy_of(&self, image: &str) -> String {
        let path = self.path(image);
        std::fs::copy(guest(image), &path).unwrap();
        path.to_string_lossy().into_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn read_file(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

#[test]
fn virtio_blk_root_disk_boots_and_stays_consistent() {
    let scratch = Scratch::new("rootdisk");
    let root = scratch.copy_of("rootfs.ext4");
    let kernel = guest("vmlinux");
    let disk = format!("path={root}");
    boot_and_test(
        &[
            "--kernel",
            &kernel,
            "--disk",
            &disk,
            "--append",
            "root=/dev/vda rw",
        ],
        "blk",
        &[&format!("BLK-OK {BLK_PATTERN_SHA256}")],
    );
    let fsck = Command::new("e2fsck")
        .args(["-fn", &root])
        .output()
        .expect("run e2fsck");
    assert!(
        fsck.status.success(),
        "e2fsck after the guest wrote to its root disk:\n{}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
}

#[test]
fn virtio_blk_data_disks_ids_read_only_and_flush_durability() {
    let scratch = Scratch::new("datadisks");
    let vda = scratch.zeros("vda.img", 8 << 20);
    let vdb = scratch.zeros("vdb.img", 4 << 20);
    let vdc = scratch.copy_of("rootfs.ext4");
    let vdc_before = read_file(&vdc);
    let (kernel, initrd) = (guest("vmlinux"), test_initramfs());
    let disks = [
        format!("path={vda},id=scratch0"),
        format!("path={vdb}"),
        format!("path={vdc},read_only=on,id=ro-root"),
    ];
    let output = boot_and_test(
        &[
            "--kernel", &kernel, "--initrd", &initrd, "--disk", &disks[0], "--disk", &disks[1],
            "--disk", &disks[2],
        ],
        "devices,blk,blkwrite",
        &["DEVICES-OK 3", "BLK-OK", "BLKWRITE-OK"],
    );
    // The blk test ran on vda (the first unmounted disk): its serial is the id we gave, and
    // it restored the disk afterwards.
    let info = output
        .lines()
        .find(|l| l.starts_with("blk: /dev/vda"))
        .expect("blk info line");
    assert!(info.contains("serial=scratch0"), "{info}");
    assert!(info.contains("ro=0"), "{info}");
    assert!(read_file(&vda).iter().all(|&b| b == 0), "blk restores vda");
    // What blkwrite wrote with O_DIRECT + fsync is in vdb's file after the VM is gone.
    let line = b"vmm durable write pattern 0123456789\n";
    let want: Vec<u8> = line.iter().copied().cycle().take(1 << 20).collect();
    let got = read_file(&vdb);
    assert_eq!(got.len(), 4 << 20, "the image keeps its size");
    assert!(got[..1 << 20] == want[..], "vdb holds the flushed pattern");
    assert!(got[1 << 20..].iter().all(|&b| b == 0));
    // The read-only disk is untouched.
    assert!(read_file(&vdc) == vdc_before, "read-only image changed");
}

/// A network namespace with a tap at 169.254.0.1/30, removed (with the tap) on drop.
pub(crate) struct NetNs {
    name: String,
    servers: Vec<Child>,
}

impl NetNs {
    pub(crate) fn new(tap: &str) -> NetNs {
        let name = format!("vmm-e2e-{}", std::process::id());
        let ns = NetNs {
            name,
            servers: Vec::new(),
        };
        let _ = Command::new("ip")
            .args(["netns", "del", &ns.name])
            .stderr(Stdio::null())
            .status();
        ns.ip(&["netns", "add", &ns.name]);
        for args in [
            vec!["link", "set", "lo", "up"],
            vec!["tuntap", "add", tap, "mode", "tap"],
            vec!["addr", "add", "169.254.0.1/30", "dev", tap],
            vec!["link", "set", tap, "up"],
        ] {
            let mut all = vec!["netns", "exec", &ns.name, "ip"];
            all.extend(args);
            ns.ip(&all);
        }
        ns
    }

    fn ip(&self, args: &[&str]) {
        let status = Command::new("ip").args(args).status().expect("run ip");
        assert!(status.success(), "ip {}", args.join(" "));
    }

    pub(crate) fn exec_prefix(&self) -> [&str; 4] {
        ["ip", "netns", "exec", &self.name]
    }

    /// Starts a host-echo.py server in the namespace and waits until it listens (Python starts
    /// slowly inside the emulated test host; the guest must not connect before).
    pub(crate) fn serve(&mut self, args: &[&str]) {
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/guest/host-echo.py");
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, "python3"])
            .arg(script)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start host-echo.py");
        let stdout = child.stdout.take().unwrap();
        self.servers.push(child);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("listening") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(60))
            .expect("host-echo.py did not start listening");
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

#[test]
fn virtio_net_ping_and_tcp_stream_in_a_private_namespace() {
    let mut ns = NetNs::new("vmmtap0");
    ns.serve(&["echo", "7000"]);
    let (kernel, initrd) = (guest("vmlinux"), test_initramfs());
    let prefix = ns.exec_prefix();
    boot_and_test_in(
        &prefix,
        &[
            "--kernel",
            &kernel,
            "--initrd",
            &initrd,
            "--net",
            "tap=vmmtap0,mac=02:00:00:00:00:02",
        ],
        "net,nettcp",
        &["NET-OK", "NETTCP-OK"],
    );
}

#[test]
fn virtio_net_creates_its_tap_when_missing_and_bad_flags_fail_first() {
    // The tap does not exist in this namespace: vmm creates it (and it vanishes with vmm).
    let ns = NetNs::new("vmmtapx");
    let (kernel, initrd) = (guest("vmlinux"), guest("initramfs.cpio.gz"));
    let prefix = ns.exec_prefix();
    boot_and_test_in(
        &prefix,
        &[
            "--kernel",
            &kernel,
            "--initrd",
            &initrd,
            "--net",
            "tap=vmmnew0",
        ],
        "devices",
        &["DEVICES-OK 1"],
    );
    let left = Command::new("ip")
        .args(["netns", "exec", &ns.name, "ip", "link", "show", "vmmnew0"])
        .output()
        .unwrap();
    assert!(!left.status.success(), "the tap vmm created outlived it");
}

/// Host side of the guest's `vsockio` test.
#[test]
fn virtio_vsock_both_directions_through_the_unix_socket() {
    let scratch = Scratch::new("vsock");
    let socket = scratch.path("v.sock");
    // Guest -> host: the guest connects to host port 6000 = Unix socket `v.sock_6000`.
    let listener = UnixListener::bind(scratch.path("v.sock_6000")).unwrap();
    let host_side = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        (&stream)
            .write_all(format!("host-echo:{line}").as_bytes())
            .unwrap();
        line
    });
    let (kernel, initrd) = (guest("vmlinux"), test_initramfs());
    let vsock = format!("cid=3,socket={}", socket.display());
    let append = format!("{} guest.test=vsock,vsockio", super::QUIET);
    let deadline = Instant::now() + BOOT_TIMEOUT;
    let mut vm = Running::start(&[
        "--kernel", &kernel, "--initrd", &initrd, "--vsock", &vsock, "--append", &append,
    ]);
    vm.expect("VSOCK-OK", deadline);
    vm.expect("VSOCK-LISTENING 5000", deadline);
    // Host -> guest: CONNECT through the device's socket.
    let reply = host_connect(&socket, 5000, "hello-from-host");
    assert_eq!(reply, "guest-echo:hello-from-host");
    vm.expect("VSOCK-GUEST-GOT hello-from-host", deadline);
    vm.expect("VSOCK-HOST-REPLY host-echo:hello-from-guest", deadline);
    vm.expect("VSOCKIO-OK", deadline);
    vm.expect("GUEST-TEST-DONE", deadline);
    assert_eq!(host_side.join().unwrap().trim_end(), "hello-from-guest");
    let (code, output) = vm.finish(deadline);
    assert_eq!(code, 0, "{output}");
    assert!(!socket.exists(), "vmm removes its vsock socket on exit");
}

/// Connects to guest `port` through the vsock Unix socket, sends one line, returns the reply.
fn host_connect(socket: &Path, port: u32, message: &str) -> String {
    let stream = UnixStream::connect(socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    (&stream)
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut ok = String::new();
    reader.read_line(&mut ok).unwrap();
    assert!(ok.starts_with("OK "), "CONNECT answer {ok:?}");
    (&stream)
        .write_all(format!("{message}\n").as_bytes())
        .unwrap();
    let mut reply = String::new();
    reader.read_line(&mut reply).unwrap();
    reply.trim_end().to_string()
}

#[test]
fn virtio_rng_and_balloon_inflation() {
    // 256 MiB guest, 128 MiB balloon: MemTotal must fall well below 256 MiB.
    let (kernel, initrd) = (guest("vmlinux"), test_initramfs());
    boot_and_test(
        &[
            "--kernel",
            &kernel,
            "--initrd",
            &initrd,
            "--memory",
            "256M",
            "--rng",
            "--balloon",
            "target=128M",
            "--append",
            "guest.balloon_max_kb=150000",
        ],
        "devices,rng,balloon",
        &["DEVICES-OK 2", "RNG-OK", "BALLOON-OK"],
    );
}

#[test]
fn virtio_devices_from_the_command_line_with_acpi_off() {
    // Without ACPI the devices are announced as virtio_mmio.device= entries.
    let scratch = Scratch::new("acpioff");
    let disk = format!("path={}", scratch.zeros("d.img", 2 << 20));
    let (kernel, initrd) = (guest("vmlinux"), guest("initramfs.cpio.gz"));
    let output = boot_and_test(
        &[
            "--kernel", &kernel, "--initrd", &initrd, "--rng", "--disk", &disk, "--append",
            "acpi=off",
        ],
        "devices,rng,blk",
        &["DEVICES-OK 2", "RNG-OK", "BLK-OK"],
    );
    assert!(
        output.contains("virtio_mmio.device=4K@0xd0000000:5"),
        "{output}"
    );
}

#[test]
fn virtio_balloon_inflates_then_deflates_on_patch_balloon() {
    // Inflate to 128 MiB at boot (MemTotal falls below ~150 MB), then PATCH /balloon to 0 over
    // the control API: the guest deflates and MemTotal comes back above 220 MB.
    let scratch = Scratch::new("balloon");
    let sock = scratch.path("api.sock");
    let (kernel, initrd) = (guest("vmlinux"), test_initramfs());
    let append = format!(
        "{} guest.test=balloon guest.balloon_max_kb=150000 guest.balloon_min_kb=220000",
        super::QUIET
    );
    let deadline = Instant::now() + BOOT_TIMEOUT;
    let sock_arg = sock.to_string_lossy().into_owned();
    let mut vm = Running::start(&[
        "--kernel",
        &kernel,
        "--initrd",
        &initrd,
        "--memory",
        "256M",
        "--balloon",
        "target=128M",
        "--api-sock",
        &sock_arg,
        "--append",
        &append,
    ]);
    vm.expect("BALLOON-OK", deadline);
    let api = vmm_api::ApiClient::new(&sock, Duration::from_secs(30));
    api.request("PATCH", "/balloon", Some(r#"{"amount_mib": 0}"#))
        .expect("PATCH /balloon");
    vm.expect("BALLOON-DEFLATE-OK", deadline);
    vm.expect("GUEST-TEST-DONE", deadline);
    let (code, output) = vm.finish(deadline);
    assert_eq!(code, 0, "{output}");
}
