//! Tier 3 for the sandbox: a Linux guest with every virtio device attached (block, net, vsock,
//! entropy, balloon) boots to its markers inside the jailer's chroot, as uid 1000 in its own
//! network namespace, with the seccomp filters on (the default): the `firecracker` front end
//! configured by a config file inside the jail. Inside the test host a failed boot is retried
//! once, in a fresh jail (`retried_in_test_host`).

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use super::virtio::{test_initramfs, Scratch};
use super::{guest, retried_in_test_host, Running, BOOT_TIMEOUT, QUIET};

/// `ip ARGS`, which must succeed.
fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("run ip");
    assert!(status.success(), "ip {}", args.join(" "));
}

/// A network namespace with a tap owned by uid 1000 at 169.254.0.1/30 (the jailed VMM, not
/// root, may attach to it but not create it), removed on drop.
struct JailNetNs(String);

impl JailNetNs {
    fn new(tap: &str) -> JailNetNs {
        let name = format!("vmm-e2e-jail-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        let ns = JailNetNs(name);
        for args in [
            vec!["link", "set", "lo", "up"],
            vec![
                "tuntap", "add", tap, "mode", "tap", "user", "1000", "group", "1000",
            ],
            vec!["addr", "add", "169.254.0.1/30", "dev", tap],
            vec!["link", "set", tap, "up"],
        ] {
            let mut all = vec!["netns", "exec", &ns.0, "ip"];
            all.extend(args);
            ip(&all);
        }
        ns
    }

    fn path(&self) -> String {
        format!("/var/run/netns/{}", self.0)
    }
}

impl Drop for JailNetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn copy_into(chroot: &Path, from: &str, name: &str) {
    std::fs::copy(from, chroot.join(name)).unwrap();
    std::os::unix::fs::chown(chroot.join(name), Some(1000), Some(1000)).unwrap();
}

#[test]
fn jailed_linux_guest_with_every_device_and_seccomp_boots_to_its_markers() {
    let ns = JailNetNs::new("fcjail0");
    // Each attempt (see retried_in_test_host) in a jail of its own.
    let attempt = AtomicUsize::new(0);
    retried_in_test_host(|| {
        let n = attempt.fetch_add(1, Ordering::SeqCst);
        let dir = Scratch::new(&format!("jail-linux-{n}"));
        let id = format!("e2e-jail-{}-{n}", std::process::id());
        // The exec file: this build's vmm under Firecracker's name.
        let bin = dir.path("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let exec = bin.join("firecracker");
        std::fs::copy(env!("CARGO_BIN_EXE_vmm"), &exec).unwrap();
        let base = dir.path("base");
        let chroot = base.join("firecracker").join(&id).join("root");
        std::fs::create_dir_all(&chroot).unwrap();
        copy_into(&chroot, &guest("vmlinux"), "vmlinux");
        copy_into(&chroot, &test_initramfs(), "initrd.cpio.gz");
        let disk = dir.zeros("disk.img", 64 << 20);
        copy_into(&chroot, &disk, "disk.img");
        let cmdline = format!(
            "{} {QUIET} guest.test=devices,blk,net,rng,vsock",
            vmm_api::DEFAULT_CMDLINE
        );
        std::fs::write(
            chroot.join("vm.json"),
            format!(
                r#"{{"boot-source": {{"kernel_image_path": "/vmlinux", "initrd_path": "/initrd.cpio.gz",
                     "boot_args": "{cmdline}"}},
                    "machine-config": {{"vcpu_count": 2, "mem_size_mib": 256}},
                    "drives": [{{"drive_id": "data", "path_on_host": "/disk.img",
                                 "is_root_device": false, "is_read_only": false}}],
                    "network-interfaces": [{{"iface_id": "eth0", "host_dev_name": "fcjail0",
                                             "guest_mac": "02:00:00:00:00:02"}}],
                    "vsock": {{"guest_cid": 3, "uds_path": "/run/v.sock"}},
                    "entropy": {{}},
                    "balloon": {{"amount_mib": 0, "deflate_on_oom": true}}}}"#
            ),
        )
        .unwrap();
        let deadline = Instant::now() + BOOT_TIMEOUT;
        let base_arg = base.to_string_lossy().into_owned();
        let exec_arg = exec.to_string_lossy().into_owned();
        let netns = ns.path();
        let mut vm = Running::spawn(
            &[],
            &[
                "jail",
                "--id",
                &id,
                "--exec-file",
                &exec_arg,
                "--uid",
                "1000",
                "--gid",
                "1000",
                "--chroot-base-dir",
                &base_arg,
                "--netns",
                &netns,
                "--",
                "--no-api",
                "--config-file",
                "/vm.json",
            ],
        );
        vm.expect("GUEST-INIT-OK", deadline);
        for marker in ["DEVICES-OK", "BLK-OK", "NET-OK", "RNG-OK", "VSOCK-OK"] {
            vm.expect(marker, deadline);
        }
        vm.expect("GUEST-TEST-DONE", deadline);
        let (code, output) = vm.finish(deadline);
        assert_eq!(
            code, 0,
            "the jailed guest's power-off ends the VMM with 0:\n{output}"
        );
        assert!(
            !output.contains("seccomp"),
            "a filter stopped the VMM:\n{output}"
        );
    });
}
