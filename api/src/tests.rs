//! Tests of the API layer: every endpoint with good and bad requests, HTTP framing (pipelining,
//! byte-by-byte input, limits, keep-alive), responses, and the configuration mapping.

use std::path::PathBuf;

use super::*;
use crate::vm_config::{MemorySize, VmConfig};

/// A request with a `Content-Length` body.
fn http(method: &str, path: &str, body: &str) -> Vec<u8> {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A request without a body or a `Content-Length`.
fn http_get(method: &str, path: &str) -> Vec<u8> {
    format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").into_bytes()
}

/// Parses one whole request with a fresh reader.
fn one(bytes: &[u8]) -> Result<ApiRequest, ApiResponse> {
    let mut reader = RequestReader::new();
    match reader.push(bytes) {
        Ok(Some(request)) => {
            assert_eq!(reader.buffered(), 0, "nothing left over");
            Ok(request)
        }
        Ok(None) => panic!("request incomplete: {:?}", String::from_utf8_lossy(bytes)),
        Err(response) => Err(response),
    }
}

fn put(path: &str, body: &str) -> Result<ApiRequest, ApiResponse> {
    one(&http("PUT", path, body))
}

fn patch(path: &str, body: &str) -> Result<ApiRequest, ApiResponse> {
    one(&http("PATCH", path, body))
}

fn get(path: &str) -> Result<ApiRequest, ApiResponse> {
    one(&http_get("GET", path))
}

/// Asserts a refusal with `status` whose fault message contains `needle`.
#[track_caller]
fn refused(result: Result<ApiRequest, ApiResponse>, status: u16, needle: &str) {
    let response = match result {
        Ok(request) => panic!("accepted: {request:?}"),
        Err(response) => response,
    };
    let message = response.fault_message().expect("a fault body");
    assert_eq!(response.status, status, "{message}");
    assert!(
        message.contains(needle),
        "{message:?} does not mention {needle:?}"
    );
}

#[test]
fn gets() {
    assert_eq!(get("/").unwrap(), ApiRequest::GetInstanceInfo);
    assert_eq!(get("/version").unwrap(), ApiRequest::GetVersion);
    assert_eq!(get("/vm/config").unwrap(), ApiRequest::GetVmConfig);
    assert_eq!(
        get("/machine-config").unwrap(),
        ApiRequest::GetMachineConfig
    );
    assert_eq!(get("/balloon").unwrap(), ApiRequest::GetBalloon);
    // An empty body with a Content-Length of 0 is no body.
    assert_eq!(
        one(&http("GET", "/", "")).unwrap(),
        ApiRequest::GetInstanceInfo
    );
    // Query strings and the absolute form are accepted.
    assert_eq!(get("/vm/config?x=1").unwrap(), ApiRequest::GetVmConfig);
    assert_eq!(
        get("http://localhost/vm/config").unwrap(),
        ApiRequest::GetVmConfig
    );
    assert_eq!(
        get("http://localhost").unwrap(),
        ApiRequest::GetInstanceInfo
    );
    refused(one(&http("GET", "/", "{}")), 400, "takes no body");
}

#[test]
fn boot_source() {
    let r = put(
        "/boot-source",
        r#"{"kernel_image_path": "/k", "boot_args": "console=ttyS0", "initrd_path": "/i"}"#,
    )
    .unwrap();
    assert_eq!(
        r,
        ApiRequest::PutBootSource(BootSource {
            kernel_image_path: "/k".into(),
            boot_args: Some("console=ttyS0".into()),
            initrd_path: Some("/i".into()),
        })
    );
    let r = put("/boot-source", r#"{"kernel_image_path": "/k"}"#).unwrap();
    assert!(matches!(r, ApiRequest::PutBootSource(b) if b.boot_args.is_none()));
    refused(
        put("/boot-source", r#"{"boot_args": "x"}"#),
        400,
        "kernel_image_path",
    );
    refused(
        put(
            "/boot-source",
            r#"{"kernel_image_path": "/k", "kernel": "/k"}"#,
        ),
        400,
        "unknown field `kernel`",
    );
    refused(
        put("/boot-source", r#"{"kernel_image_path": ""}"#),
        400,
        "empty",
    );
    refused(
        put("/boot-source", r#"{"kernel_image_path": "/k\u0000x"}"#),
        400,
        "NUL",
    );
    refused(
        put("/boot-source", r#"{"kernel_image_path": 5}"#),
        400,
        "invalid type",
    );
    refused(put("/boot-source", "[]"), 400, "PUT /boot-source");
}

#[test]
fn machine_config() {
    let r = put(
        "/machine-config",
        r#"{"vcpu_count": 2, "mem_size_mib": 256, "smt": false, "track_dirty_pages": true,
            "huge_pages": "Transparent", "cpu_template": "None"}"#,
    )
    .unwrap();
    let ApiRequest::PutMachineConfig(m) = r else {
        panic!("{r:?}")
    };
    assert_eq!((m.vcpu_count, m.mem_size_mib), (2, 256));
    assert!(m.track_dirty_pages && m.huge_pages == HugePages::Transparent);
    let r = put(
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 128}"#,
    )
    .unwrap();
    assert!(matches!(r, ApiRequest::PutMachineConfig(m) if m.huge_pages == HugePages::None));
    let r = patch("/machine-config", r#"{"mem_size_mib": 512}"#).unwrap();
    assert_eq!(
        r,
        ApiRequest::PatchMachineConfig(MachineConfigUpdate {
            mem_size_mib: Some(512),
            ..Default::default()
        })
    );
    for (body, needle) in [
        (r#"{"vcpu_count": 0, "mem_size_mib": 128}"#, "vcpu_count"),
        (r#"{"vcpu_count": 1, "mem_size_mib": 0}"#, "mem_size_mib"),
        (r#"{"vcpu_count": 1}"#, "mem_size_mib"),
        (
            r#"{"vcpu_count": -1, "mem_size_mib": 128}"#,
            "invalid value",
        ),
        (
            r#"{"vcpu_count": 1, "mem_size_mib": 18446744073709551615}"#,
            "overflows",
        ),
        (
            r#"{"vcpu_count": 3, "mem_size_mib": 128, "smt": true}"#,
            "even",
        ),
        (
            r#"{"vcpu_count": 1, "mem_size_mib": 128, "huge_pages": "2M"}"#,
            "hugetlbfs",
        ),
        (
            r#"{"vcpu_count": 1, "mem_size_mib": 128, "huge_pages": "1G"}"#,
            "unknown variant",
        ),
        (
            r#"{"vcpu_count": 1, "mem_size_mib": 128, "cpu_template": "T2"}"#,
            "CPU template",
        ),
        (
            r#"{"vcpu_count": 1, "mem_size_mib": 128, "vcpus": 1}"#,
            "unknown field",
        ),
    ] {
        refused(put("/machine-config", body), 400, needle);
    }
    refused(
        patch("/machine-config", r#"{"vcpu_count": 0}"#),
        400,
        "vcpu_count",
    );
    refused(
        patch("/machine-config", r#"{"smt": true, "vcpu_count": 3}"#),
        400,
        "even",
    );
    refused(
        put(
            "/machine-config",
            r#"{"vcpu_count": 1, "mem_size_mib": 128, "cpu_template": "Z9"}"#,
        ),
        400,
        "not one of",
    );
    // Firecracker's clients send null for what they leave unset, and SMT with an even count.
    let Ok(ApiRequest::PutMachineConfig(m)) = put(
        "/machine-config",
        r#"{"vcpu_count": 2, "mem_size_mib": 128, "smt": null, "track_dirty_pages": null,
            "huge_pages": null, "cpu_template": "None"}"#,
    ) else {
        panic!("nulls refused")
    };
    assert!(!m.smt && !m.track_dirty_pages);
    assert!(matches!(
        put(
            "/machine-config",
            r#"{"vcpu_count": 2, "mem_size_mib": 128, "smt": true}"#
        ),
        Ok(ApiRequest::PutMachineConfig(MachineConfig {
            smt: true,
            ..
        }))
    ));
}

const DRIVE: &str = r#"{"drive_id": "rootfs", "path_on_host": "/img", "is_root_device": true, "is_read_only": false}"#;

#[test]
fn drives() {
    let ApiRequest::PutDrive(d) = put("/drives/rootfs", DRIVE).unwrap() else {
        panic!()
    };
    assert_eq!(d.drive_id, "rootfs");
    assert_eq!(d.path_on_host.as_deref(), Some("/img"));
    assert!(d.is_root_device);
    let full = r#"{"drive_id": "d_1-x", "path_on_host": "/img", "is_root_device": false,
        "partuuid": "abcd-01", "cache_type": "Writeback", "io_engine": "Sync",
        "rate_limiter": null}"#;
    assert!(matches!(
        put("/drives/d_1-x", full),
        Ok(ApiRequest::PutDrive(_))
    ));
    refused(put("/drives/other", DRIVE), 400, "differs");
    refused(put("/drives/bad.id", DRIVE), 400, "'.' is not allowed");
    refused(put("/drives/", DRIVE), 400, "empty");
    let long = "a".repeat(65);
    refused(put(&format!("/drives/{long}"), DRIVE), 400, "65 bytes");
    let ok64 = "a".repeat(64);
    let body = DRIVE.replace("rootfs", &ok64);
    assert!(put(&format!("/drives/{ok64}"), &body).is_ok());
    refused(put("/drives/a/b", DRIVE), 400, "no such endpoint");
    for (body, needle) in [
        (
            r#"{"drive_id": "x", "is_root_device": false}"#,
            "path_on_host",
        ),
        (
            r#"{"drive_id": "x", "path_on_host": "/i"}"#,
            "is_root_device",
        ),
        (
            r#"{"drive_id": "x", "path_on_host": "", "is_root_device": false}"#,
            "empty",
        ),
        (
            r#"{"drive_id": "x", "path_on_host": "/i", "is_root_device": false, "socket": "/s"}"#,
            "vhost-user",
        ),
        (
            r#"{"drive_id": "x", "path_on_host": "/i", "is_root_device": false,
                "rate_limiter": {"bandwidth": {"size": 1, "refill_time": 1, "burst": 1}}}"#,
            "unknown field `burst`",
        ),
        (
            r#"{"drive_id": "x", "path_on_host": "/i", "is_root_device": true, "partuuid": "a b"}"#,
            "partuuid",
        ),
        (
            r#"{"drive_id": "x", "path_on_host": "/i", "is_root_device": false, "io_engine": "Uring"}"#,
            "unknown variant",
        ),
        (
            r#"{"drive_id": "x", "path_on_host": "/i", "is_root_device": false, "ro": true}"#,
            "unknown field `ro`",
        ),
    ] {
        refused(put("/drives/x", body), 400, needle);
    }
}

#[test]
fn network_interfaces() {
    let body = r#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "02:00:00:00:00:01"}"#;
    let ApiRequest::PutNetworkInterface(n) = put("/network-interfaces/eth0", body).unwrap() else {
        panic!()
    };
    assert_eq!(n.host_dev_name, "tap0");
    assert_eq!(n.guest_mac.as_deref(), Some("02:00:00:00:00:01"));
    assert!(put(
        "/network-interfaces/eth0",
        r#"{"iface_id": "eth0", "host_dev_name": "tap0", "rx_rate_limiter": null}"#
    )
    .is_ok());
    refused(put("/network-interfaces/eth1", body), 400, "differs");
    for (body, needle) in [
        (r#"{"iface_id": "eth0"}"#, "host_dev_name"),
        (
            r#"{"iface_id": "eth0", "host_dev_name": ""}"#,
            "host_dev_name",
        ),
        (
            r#"{"iface_id": "eth0", "host_dev_name": "a-very-long-tap-name"}"#,
            "15 bytes",
        ),
        (
            r#"{"iface_id": "eth0", "host_dev_name": "ta/p"}"#,
            "not a valid",
        ),
        (
            r#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "01:00:00:00:00:01"}"#,
            "unicast",
        ),
        (
            r#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "zz"}"#,
            "guest_mac",
        ),
        (
            r#"{"iface_id": "eth0", "host_dev_name": "tap0", "mtu": 1400}"#,
            "MTU",
        ),
        (
            r#"{"iface_id": "eth0", "host_dev_name": "tap0", "tx_rate_limiter": {"ops": 5}}"#,
            "invalid type",
        ),
        (
            r#"{"iface_id": "eth0", "host_dev_name": "tap0", "mac": "x"}"#,
            "unknown field",
        ),
    ] {
        refused(put("/network-interfaces/eth0", body), 400, needle);
    }
}

#[test]
fn vsock_entropy_actions_vm() {
    let r = put(
        "/vsock",
        r#"{"guest_cid": 3, "uds_path": "/v.sock", "vsock_id": "vsock0"}"#,
    );
    assert!(
        matches!(r, Ok(ApiRequest::PutVsock(v)) if v.guest_cid == 3 && v.uds_path == "/v.sock")
    );
    // Any 32-bit CID, as Firecracker takes it; negative and wider ones are refused.
    assert!(matches!(
        put("/vsock", r#"{"guest_cid": 2, "uds_path": "/v"}"#),
        Ok(ApiRequest::PutVsock(Vsock { guest_cid: 2, .. }))
    ));
    refused(
        put("/vsock", r#"{"guest_cid": -3, "uds_path": "/v"}"#),
        400,
        "expected u32",
    );
    refused(
        put("/vsock", r#"{"guest_cid": 4294967296, "uds_path": "/v"}"#),
        400,
        "expected u32",
    );
    refused(put("/vsock", r#"{"guest_cid": 3}"#), 400, "uds_path");
    refused(
        put("/vsock", r#"{"guest_cid": 3, "uds_path": ""}"#),
        400,
        "empty",
    );

    assert_eq!(
        put("/entropy", "{}").unwrap(),
        ApiRequest::PutEntropy(EntropyDevice::default())
    );
    // Firecracker's shapes: an empty limiter is none, buckets are typed.
    assert!(put("/entropy", r#"{"rate_limiter": {}}"#).is_ok());
    let Ok(ApiRequest::PutEntropy(e)) = put(
        "/entropy",
        r#"{"rate_limiter": {"bandwidth": {"size": 1000, "one_time_burst": 10, "refill_time": 100}}}"#,
    ) else {
        panic!("entropy limiter refused")
    };
    assert_eq!(e.rate_limiter.unwrap().bandwidth.unwrap().size, 1000);
    let Ok(ApiRequest::PatchDrive(d)) = patch(
        "/drives/d1",
        r#"{"drive_id": "d1", "rate_limiter": {"ops": {"size": 100, "refill_time": 1000}}}"#,
    ) else {
        panic!("drive patch refused")
    };
    assert!(d.path_on_host.is_none() && d.rate_limiter.unwrap().ops.is_some());
    assert!(matches!(
        patch(
            "/network-interfaces/eth0",
            r#"{"iface_id": "eth0", "rx_rate_limiter": {"bandwidth": {"size": 1, "refill_time": 1}}}"#
        ),
        Ok(ApiRequest::PatchNetworkInterface(_))
    ));

    for (name, action) in [
        ("InstanceStart", ActionType::InstanceStart),
        ("SendCtrlAltDel", ActionType::SendCtrlAltDel),
        ("PressPowerButton", ActionType::PressPowerButton),
        ("FlushMetrics", ActionType::FlushMetrics),
    ] {
        let body = format!(r#"{{"action_type": "{name}"}}"#);
        assert_eq!(put("/actions", &body).unwrap(), ApiRequest::Action(action));
    }
    refused(
        put("/actions", r#"{"action_type": "Reboot"}"#),
        400,
        "unknown variant",
    );
    refused(put("/actions", r#"{}"#), 400, "action_type");
    refused(
        put(
            "/actions",
            r#"{"action_type": "InstanceStart", "now": true}"#,
        ),
        400,
        "unknown field",
    );

    assert_eq!(
        patch("/vm", r#"{"state": "Paused"}"#).unwrap(),
        ApiRequest::PatchVm(VmState::Paused)
    );
    assert_eq!(
        patch("/vm", r#"{"state": "Resumed"}"#).unwrap(),
        ApiRequest::PatchVm(VmState::Resumed)
    );
    refused(
        patch("/vm", r#"{"state": "Stopped"}"#),
        400,
        "unknown variant",
    );
    refused(put("/vm", r#"{"state": "Paused"}"#), 405, "PATCH");
}

#[test]
fn snapshots() {
    let r = put(
        "/snapshot/create",
        r#"{"snapshot_path": "/s", "mem_file_path": "/m"}"#,
    );
    assert!(
        matches!(r, Ok(ApiRequest::CreateSnapshot(s)) if s.snapshot_type == SnapshotType::Full)
    );
    let r = put(
        "/snapshot/create",
        r#"{"snapshot_type": "Diff", "snapshot_path": "/s", "mem_file_path": "/m"}"#,
    );
    assert!(
        matches!(r, Ok(ApiRequest::CreateSnapshot(s)) if s.snapshot_type == SnapshotType::Diff)
    );
    refused(
        put("/snapshot/create", r#"{"snapshot_path": "/s"}"#),
        400,
        "mem_file_path",
    );
    refused(
        put(
            "/snapshot/create",
            r#"{"snapshot_type": "Partial", "snapshot_path": "/s", "mem_file_path": "/m"}"#,
        ),
        400,
        "unknown variant",
    );

    let r = put(
        "/snapshot/load",
        r#"{"snapshot_path": "/s", "mem_file_path": "/m", "enable_diff_snapshots": true,
            "resume_vm": true}"#,
    )
    .unwrap();
    assert_eq!(
        r,
        ApiRequest::LoadSnapshot(SnapshotLoad {
            snapshot_path: "/s".into(),
            mem_file_path: "/m".into(),
            track_dirty_pages: true,
            resume_vm: true,
            network_overrides: vec![],
            vsock_override: None,
            clock_realtime: false,
            key_file: None,
        })
    );
    // The key_file extension of sealed snapshots, on both requests.
    let r = put(
        "/snapshot/create",
        r#"{"snapshot_path": "/s", "mem_file_path": "/m", "key_file": "/k"}"#,
    );
    assert!(matches!(r, Ok(ApiRequest::CreateSnapshot(s)) if s.key_file.as_deref() == Some("/k")));
    let r = put(
        "/snapshot/load",
        r#"{"snapshot_path": "/s", "mem_file_path": "/m", "key_file": "/k"}"#,
    );
    assert!(matches!(r, Ok(ApiRequest::LoadSnapshot(l)) if l.key_file.as_deref() == Some("/k")));
    refused(
        put(
            "/snapshot/load",
            r#"{"snapshot_path": "/s", "mem_file_path": "/m", "key_file": ""}"#,
        ),
        400,
        "key_file",
    );
    let r = put(
        "/snapshot/load",
        r#"{"snapshot_path": "/s", "mem_backend": {"backend_type": "File", "backend_path": "/m"},
            "network_overrides": [{"iface_id": "eth0", "host_dev_name": "tap9"}],
            "vsock_override": {"uds_path": "/v2"}, "clock_realtime": true}"#,
    )
    .unwrap();
    let ApiRequest::LoadSnapshot(load) = r else {
        panic!()
    };
    assert_eq!(load.mem_file_path, "/m");
    assert!(!load.resume_vm && !load.track_dirty_pages && load.clock_realtime);
    assert_eq!(load.network_overrides[0].host_dev_name, "tap9");
    assert_eq!(load.vsock_override.as_deref(), Some("/v2"));
    for (body, needle) in [
        (r#"{"snapshot_path": "/s"}"#, "memory file is required"),
        (
            r#"{"snapshot_path": "/s", "mem_file_path": "/m",
                "mem_backend": {"backend_type": "File", "backend_path": "/m"}}"#,
            "not both",
        ),
        (
            r#"{"snapshot_path": "/s", "mem_backend": {"backend_type": "Uffd", "backend_path": "/u"}}"#,
            "userfaultfd",
        ),
        (
            r#"{"snapshot_path": "/s", "mem_backend": {"backend_type": "File"}}"#,
            "backend_path",
        ),
        (r#"{"snapshot_path": "", "mem_file_path": "/m"}"#, "empty"),
        (
            r#"{"snapshot_path": "/s", "mem_file_path": "/m",
                "network_overrides": [{"iface_id": "e th", "host_dev_name": "t"}]}"#,
            "iface_id",
        ),
        (
            r#"{"snapshot_path": "/s", "mem_file_path": "/m", "version": "1"}"#,
            "unknown field",
        ),
    ] {
        refused(put("/snapshot/load", body), 400, needle);
    }
    refused(get("/snapshot/create"), 405, "PUT");
}

#[test]
fn balloon() {
    let r = put("/balloon", r#"{"amount_mib": 64, "deflate_on_oom": true}"#).unwrap();
    assert!(matches!(r, ApiRequest::PutBalloon(b) if b.amount_mib == 64 && b.deflate_on_oom));
    assert!(put(
        "/balloon",
        r#"{"amount_mib": 0, "deflate_on_oom": false, "stats_polling_interval_s": 0}"#
    )
    .is_ok());
    assert_eq!(
        patch("/balloon", r#"{"amount_mib": 32}"#).unwrap(),
        ApiRequest::PatchBalloon(BalloonUpdate { amount_mib: 32 })
    );
    refused(
        put("/balloon", r#"{"amount_mib": 64}"#),
        400,
        "deflate_on_oom",
    );
    assert!(matches!(
        put(
            "/balloon",
            r#"{"amount_mib": 64, "deflate_on_oom": true, "stats_polling_interval_s": 1}"#,
        ),
        Ok(ApiRequest::PutBalloon(Balloon {
            stats_polling_interval_s: Some(1),
            ..
        }))
    ));
    assert!(matches!(
        patch("/balloon/statistics", r#"{"stats_polling_interval_s": 5}"#),
        Ok(ApiRequest::PatchBalloonStats(BalloonStatsUpdate {
            stats_polling_interval_s: 5
        }))
    ));
    assert_eq!(
        get("/balloon/statistics").unwrap(),
        ApiRequest::GetBalloonStats
    );
    refused(
        put(
            "/balloon",
            r#"{"amount_mib": 64, "deflate_on_oom": true, "free_page_reporting": true}"#,
        ),
        400,
        "reporting",
    );
    refused(
        patch("/balloon", r#"{"amount_mib": 64, "deflate_on_oom": true}"#),
        400,
        "unknown field",
    );
    refused(one(&http("DELETE", "/balloon", "")), 405, "GET, PUT, PATCH");
}

#[test]
fn unknown_paths_and_wrong_methods() {
    refused(get("/nope"), 400, "\"/nope\"");
    refused(get("/mmds"), 400, "metadata service");
    refused(
        put("/mmds/config", r#"{"network_interfaces": ["1"]}"#),
        400,
        "not supported",
    );
    refused(get("/boot-source/"), 400, "no such endpoint");
    refused(get("relative"), 400, "no such endpoint");
    refused(get("/boot-source"), 405, "PUT");
    refused(one(&http("POST", "/actions", "{}")), 405, "POST");
    refused(one(&http_get("DELETE", "/")), 405, "GET");
    refused(one(&http_get("HEAD", "/vm/config")), 405, "HEAD");
    refused(patch("/boot-source", "{}"), 405, "PATCH");
    refused(
        patch("/drives/x", DRIVE),
        400,
        "unknown field `is_root_device`",
    );
    // The method is checked before the body...
    refused(one(&http("PUT", "/", "not json")), 405, "PUT");
    // ...but a PUT without a length is refused from its head: its framing is unknown.
    refused(one(&http_get("PUT", "/")), 411, "Content-Length");
}

#[test]
fn bodies() {
    refused(put("/actions", ""), 400, "needs a JSON body");
    refused(put("/actions", "  \r\n"), 400, "needs a JSON body");
    refused(put("/actions", "{"), 400, "EOF");
    refused(
        put("/actions", "{\"action_type\": \"InstanceStart\"} x"),
        400,
        "trailing",
    );
    refused(put("/actions", "\u{fffd}"), 400, "PUT /actions");
    let mut reader = RequestReader::new();
    let mut bytes = http("PUT", "/actions", "nonsense");
    bytes.extend(http_get("GET", "/"));
    let response = reader.push(&bytes).unwrap_err();
    assert_eq!(response.status, 400);
    assert!(!reader.should_close(), "a bad body keeps the connection");
    assert_eq!(reader.push(&[]).unwrap(), Some(ApiRequest::GetInstanceInfo));
}

#[test]
fn pipelined_requests_in_one_buffer() {
    let mut bytes = http("PUT", "/boot-source", r#"{"kernel_image_path": "/k"}"#);
    bytes.extend(http_get("GET", "/nope"));
    bytes.extend(b"\r\n"); // A stray empty line between requests is ignored.
    bytes.extend(http("PATCH", "/vm", r#"{"state": "Paused"}"#));
    bytes.extend(http_get("GET", "/"));
    bytes.extend(b"GET /vm/con"); // The start of a fifth.
    let mut reader = RequestReader::new();
    assert!(matches!(
        reader.push(&bytes),
        Ok(Some(ApiRequest::PutBootSource(_)))
    ));
    assert_eq!(reader.push(&[]).unwrap_err().status, 400);
    assert_eq!(
        reader.push(&[]).unwrap(),
        Some(ApiRequest::PatchVm(VmState::Paused))
    );
    assert_eq!(reader.push(&[]).unwrap(), Some(ApiRequest::GetInstanceInfo));
    assert_eq!(reader.push(&[]).unwrap(), None);
    assert_eq!(
        reader.push(b"fig HTTP/1.1\r\n\r\n").unwrap(),
        Some(ApiRequest::GetVmConfig)
    );
    assert_eq!(reader.push(&[]).unwrap(), None);
    assert!(!reader.should_close());
    assert_eq!(reader.buffered(), 0);
}

#[test]
fn request_split_byte_by_byte() {
    let mut reader = RequestReader::new();
    for _ in 0..3 {
        let bytes = http("PUT", "/drives/rootfs", DRIVE);
        let (last, head) = bytes.split_last().unwrap();
        for b in head {
            assert_eq!(reader.push(std::slice::from_ref(b)).unwrap(), None);
        }
        let request = reader.push(&[*last]).unwrap().unwrap();
        assert!(matches!(request, ApiRequest::PutDrive(d) if d.drive_id == "rootfs"));
    }
    // Bare LF line endings too.
    let bytes = b"GET /vm/config HTTP/1.1\nHost: x\n\n";
    for b in &bytes[..bytes.len() - 1] {
        assert_eq!(reader.push(std::slice::from_ref(b)).unwrap(), None);
    }
    assert_eq!(reader.push(b"\n").unwrap(), Some(ApiRequest::GetVmConfig));
}

#[test]
fn head_limits() {
    // Just under the limit: fine.
    let pad = MAX_HEAD_BYTES - 200;
    let bytes = format!("GET / HTTP/1.1\r\nX-Pad: {}\r\n\r\n", "a".repeat(pad));
    assert!(bytes.len() <= MAX_HEAD_BYTES);
    assert_eq!(one(bytes.as_bytes()).unwrap(), ApiRequest::GetInstanceInfo);

    // Over it, whole.
    let bytes = format!(
        "GET / HTTP/1.1\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(MAX_HEAD_BYTES)
    );
    let mut reader = RequestReader::new();
    let response = reader.push(bytes.as_bytes()).unwrap_err();
    assert_eq!(response.status, 431);
    assert!(reader.should_close());
    assert_eq!(reader.push(&http_get("GET", "/")).unwrap(), None, "closed");

    // Over it without ever ending: refused as soon as the limit passes.
    let mut reader = RequestReader::new();
    assert_eq!(reader.push(b"GET / HTTP/1.1\r\nX-Pad: ").unwrap(), None);
    let chunk = [b'a'; 1024];
    let mut status = None;
    for _ in 0..16 {
        match reader.push(&chunk) {
            Ok(None) => {}
            Ok(Some(r)) => panic!("{r:?}"),
            Err(response) => {
                status = Some(response.status);
                break;
            }
        }
    }
    assert_eq!(status, Some(431));
    assert!(reader.buffered() == 0 && reader.should_close());

    // Too many headers.
    let mut head = String::from("GET / HTTP/1.1\r\n");
    for i in 0..100 {
        head.push_str(&format!("X-{i}: 1\r\n"));
    }
    head.push_str("\r\n");
    refused(one(head.as_bytes()), 431, "headers");
}

#[test]
fn body_limits() {
    // A body of exactly the limit (JSON padded with spaces) is fine.
    let json = r#"{"action_type": "InstanceStart"}"#;
    let body = format!("{json}{}", " ".repeat(MAX_BODY_BYTES - json.len()));
    assert_eq!(
        put("/actions", &body).unwrap(),
        ApiRequest::Action(ActionType::InstanceStart)
    );
    // One more byte is refused from the head alone, before any body arrives.
    let mut reader = RequestReader::new();
    let head = format!(
        "PUT /actions HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        MAX_BODY_BYTES + 1
    );
    let response = reader.push(head.as_bytes()).unwrap_err();
    assert_eq!(response.status, 413);
    assert!(reader.should_close());
    let huge = "PUT /actions HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n";
    assert_eq!(one(huge.as_bytes()).unwrap_err().status, 400);
}

#[test]
fn framing_errors_close_the_connection() {
    let cases: &[(&[u8], u16, &str)] = &[
        (
            b"PUT /actions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            411,
            "Transfer-Encoding",
        ),
        (b"PUT /actions HTTP/1.1\r\n\r\n{}", 411, "Content-Length"),
        (b"PATCH /vm HTTP/1.1\r\n\r\n", 411, "Content-Length"),
        (
            b"PUT /actions HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
            400,
            "Content-Length",
        ),
        (
            b"PUT /actions HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            400,
            "Content-Length",
        ),
        (
            b"PUT /actions HTTP/1.1\r\nContent-Length: +2\r\n\r\n{}",
            400,
            "Content-Length",
        ),
        (
            b"PUT /actions HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
            400,
            "Content-Length",
        ),
        (
            b"PUT /actions HTTP/1.1\r\nExpect: magic\r\n\r\n",
            417,
            "Expect",
        ),
        (b"\x00\x01garbage\r\n\r\n", 400, "malformed"),
        (b"GET / HTTP/2.0\r\n\r\n", 400, "malformed"),
        (b"GET /\r\n\r\n", 400, "malformed"),
        (b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n", 400, "malformed"),
        (b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n", 400, "malformed"),
    ];
    for &(bytes, status, needle) in cases {
        let mut reader = RequestReader::new();
        let response = reader.push(bytes).unwrap_err();
        let message = response.fault_message().unwrap();
        assert_eq!(response.status, status, "{message}");
        assert!(message.contains(needle), "{message}");
        assert!(reader.should_close(), "{}", String::from_utf8_lossy(bytes));
        assert_eq!(reader.buffered(), 0);
        assert_eq!(reader.push(&http_get("GET", "/")).unwrap(), None);
    }
    // Two equal lengths are one length.
    let bytes = b"PATCH /vm HTTP/1.1\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\n{}";
    refused(one(bytes), 400, "missing field `state`");
}

#[test]
fn keep_alive_and_close() {
    let mut reader = RequestReader::new();
    let mut bytes = b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec();
    bytes.extend(http_get("GET", "/version"));
    assert_eq!(
        reader.push(&bytes).unwrap(),
        Some(ApiRequest::GetInstanceInfo)
    );
    assert!(reader.should_close());
    assert_eq!(reader.push(&[]).unwrap(), None, "nothing after close");

    let mut reader = RequestReader::new();
    assert_eq!(
        reader.push(b"GET / HTTP/1.0\r\n\r\n").unwrap(),
        Some(ApiRequest::GetInstanceInfo)
    );
    assert!(reader.should_close(), "HTTP/1.0 closes by default");

    let mut reader = RequestReader::new();
    let bytes = b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n";
    assert!(reader.push(bytes).unwrap().is_some());
    assert!(!reader.should_close());
    assert!(reader.push(bytes).unwrap().is_some());
}

#[test]
fn expect_continue() {
    let body = r#"{"state": "Paused"}"#;
    let head = format!(
        "PATCH /vm HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut reader = RequestReader::new();
    assert_eq!(reader.push(head.as_bytes()).unwrap(), None);
    assert!(reader.take_continue());
    assert!(!reader.take_continue(), "once");
    assert_eq!(
        reader.push(body.as_bytes()).unwrap(),
        Some(ApiRequest::PatchVm(VmState::Paused))
    );
    // Body sent along with the head: nothing owed.
    let mut reader = RequestReader::new();
    let mut bytes = head.into_bytes();
    bytes.extend(body.as_bytes());
    assert!(reader.push(&bytes).unwrap().is_some());
    assert!(!reader.take_continue());
    assert_eq!(CONTINUE_RESPONSE, b"HTTP/1.1 100 Continue\r\n\r\n");
}

#[test]
fn responses() {
    let text = |r: &ApiResponse| String::from_utf8(r.to_http()).unwrap();
    let ok = ApiResponse::ok_json(&InstanceInfo::new(
        "vm0",
        InstanceState::NotStarted,
        Flavor::Vmm,
    ));
    assert_eq!(ok.status, 200);
    let t = text(&ok);
    assert!(t.starts_with("HTTP/1.1 200 OK\r\n"), "{t}");
    let body = ok.body.as_deref().unwrap();
    assert!(t.contains("Content-Type: application/json\r\n"));
    assert!(t.contains(&format!("Content-Length: {}\r\n", body.len())));
    assert!(t.ends_with(&format!("\r\n\r\n{body}")));
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["state"], "Not started");
    assert_eq!(v["app_name"], "vmm");
    assert_eq!(v["id"], "vm0");

    let t = text(&ApiResponse::no_content());
    assert!(t.starts_with("HTTP/1.1 204 No Content\r\n"));
    assert!(!t.contains("Content-Length") && t.ends_with("\r\n\r\n"));

    let bad = ApiResponse::bad_request("bad \"thing\"\n");
    assert_eq!(bad.status, 400);
    assert_eq!(bad.fault_message().as_deref(), Some("bad \"thing\"\n"));
    let t = text(&bad);
    assert!(t.starts_with("HTTP/1.1 400 Bad Request\r\n"));
    let (_, body) = t.split_once("\r\n\r\n").unwrap();
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v, serde_json::json!({"fault_message": "bad \"thing\"\n"}));

    assert_eq!(ApiResponse::method_not_allowed("m").status, 405);
    assert_eq!(ApiResponse::not_found("m").status, 404);
    assert_eq!(ApiResponse::internal_error("m").status, 500);
    let empty = ApiResponse {
        status: 200,
        body: None,
    };
    assert!(text(&empty).contains("Content-Length: 0\r\n"));
    let closing = String::from_utf8(bad.to_http_closing()).unwrap();
    assert!(closing.contains("Connection: close\r\n"));
    assert!(ApiResponse::no_content().is_success() && !bad.is_success());
    let v = serde_json::to_value(VersionInfo::default()).unwrap();
    assert_eq!(v["firecracker_version"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn request_classes() {
    assert!(put("/boot-source", r#"{"kernel_image_path": "/k"}"#)
        .unwrap()
        .pre_boot_only());
    assert!(!patch("/balloon", r#"{"amount_mib": 1}"#)
        .unwrap()
        .pre_boot_only());
    assert!(!patch("/vm", r#"{"state": "Paused"}"#)
        .unwrap()
        .pre_boot_only());
}

fn drive(id: &str, path: &str, root: bool) -> Drive {
    Drive {
        drive_id: id.into(),
        path_on_host: Some(path.into()),
        is_root_device: root,
        is_read_only: None,
        partuuid: None,
        cache_type: None,
        io_engine: None,
        rate_limiter: None,
        socket: None,
        format: None,
        verity_hash_file: None,
        verity_root_hash: None,
        key_file: None,
        passphrase_file: None,
        luks_header: None,
    }
}

#[test]
fn apply_boot_and_machine() {
    let mut c = ApiConfig::default();
    let boot = BootSource {
        kernel_image_path: "/k".into(),
        boot_args: Some("console=ttyS0 quiet".into()),
        initrd_path: Some("/i".into()),
    };
    assert!(c.apply(&ApiRequest::PutBootSource(boot)).unwrap());
    assert_eq!(c.vm.kernel, Some(PathBuf::from("/k")));
    assert_eq!(c.vm.initrd, Some(PathBuf::from("/i")));
    assert_eq!(c.vm.cmdline.as_deref(), Some("console=ttyS0 quiet"));
    // A new PUT replaces the whole boot source.
    let boot = BootSource {
        kernel_image_path: "/k2".into(),
        boot_args: None,
        initrd_path: None,
    };
    apply_boot_source(&mut c.vm, &boot).unwrap();
    assert_eq!((c.vm.initrd.clone(), c.vm.cmdline.clone()), (None, None));

    let machine = MachineConfig {
        vcpu_count: 4,
        mem_size_mib: 512,
        smt: false,
        track_dirty_pages: true,
        huge_pages: HugePages::Transparent,
        cpu_template: None,
    };
    c.apply(&ApiRequest::PutMachineConfig(machine.clone()))
        .unwrap();
    assert_eq!(c.vm.vcpus, 4);
    assert_eq!(c.vm.memory, MemorySize(512 << 20));
    assert!(c.vm.hugepages && c.vm.track_dirty_pages);
    assert_eq!(c.machine_config(), machine);
    let update = MachineConfigUpdate {
        vcpu_count: Some(2),
        track_dirty_pages: Some(false),
        ..Default::default()
    };
    c.apply(&ApiRequest::PatchMachineConfig(update)).unwrap();
    assert_eq!((c.vm.vcpus, c.vm.memory), (2, MemorySize(512 << 20)));
    assert!(c.vm.hugepages && !c.vm.track_dirty_pages);
    let bad = MachineConfig {
        vcpu_count: 0,
        ..machine
    };
    assert!(apply_machine_config(&mut c.vm, &bad).is_err());
    assert_eq!(c.vm.vcpus, 2, "a refused request changes nothing");
    assert!(!c
        .apply(&ApiRequest::Action(ActionType::InstanceStart))
        .unwrap());
    assert!(!c.apply(&ApiRequest::GetVmConfig).unwrap());
}

#[test]
fn apply_verity_drive() {
    let mut c = ApiConfig::default();
    let vm = &mut c.vm;
    let root = "0f".repeat(32);
    let mut d = drive("data", "/data", false);
    d.verity_hash_file = Some("/data.hash".into());
    d.verity_root_hash = Some(root.clone());
    // Not read-only: refused.
    assert!(apply_drive(vm, &d).is_err());
    d.is_read_only = Some(true);
    apply_drive(vm, &d).unwrap();
    let v = vm.disk[0].verity.as_ref().unwrap();
    assert_eq!(v.root_hash, root);
    let mut half = d.clone();
    half.verity_root_hash = None;
    assert!(apply_drive(vm, &half).is_err());
    let mut bad = d.clone();
    bad.verity_root_hash = Some("nothex".into());
    assert!(apply_drive(vm, &bad).is_err());
    let body: Drive = serde_json::from_str(&format!(
        r#"{{"drive_id": "d", "path_on_host": "/d", "is_root_device": false, "is_read_only": true,
            "verity_hash_file": "/d.hash", "verity_root_hash": "{root}"}}"#
    ))
    .unwrap();
    assert_eq!(
        body.verity().unwrap().unwrap().hash_file.to_str(),
        Some("/d.hash")
    );
}

#[test]
fn apply_drives() {
    let mut vm = VmConfig {
        append: Some("quiet".into()),
        ..Default::default()
    };
    apply_drive(&mut vm, &drive("data", "/data", false)).unwrap();
    apply_drive(&mut vm, &drive("rootfs", "/root", true)).unwrap();
    let ids: Vec<_> = vm.disk.iter().map(|d| d.id.clone().unwrap()).collect();
    assert_eq!(ids, ["rootfs", "data"], "the root drive is vda");
    assert_eq!(vm.append.as_deref(), Some("quiet root=/dev/vda rw"));

    // A second root is refused; updating the root itself is fine.
    let err = apply_drive(&mut vm, &drive("other", "/o", true)).unwrap_err();
    assert!(matches!(err, ApiError::RootDriveExists { ref existing } if existing == "rootfs"));
    let mut ro = drive("rootfs", "/root2", true);
    ro.is_read_only = Some(true);
    ro.partuuid = Some("1234-01".into());
    apply_drive(&mut vm, &ro).unwrap();
    assert_eq!(vm.disk.len(), 2);
    assert_eq!(vm.disk[0].path, PathBuf::from("/root2"));
    assert!(vm.disk[0].read_only);
    assert_eq!(vm.append.as_deref(), Some("quiet root=PARTUUID=1234-01 ro"));

    // Updating a data disk keeps its place.
    apply_drive(&mut vm, &drive("data", "/data2", false)).unwrap();
    apply_drive(&mut vm, &drive("more", "/more", false)).unwrap();
    let ids: Vec<_> = vm.disk.iter().map(|d| d.id.clone().unwrap()).collect();
    assert_eq!(ids, ["rootfs", "data", "more"]);
    assert_eq!(vm.disk[1].path, PathBuf::from("/data2"));

    // The root drive stops being root: the tokens go, it moves to the end.
    apply_drive(&mut vm, &drive("rootfs", "/root2", false)).unwrap();
    let ids: Vec<_> = vm.disk.iter().map(|d| d.id.clone().unwrap()).collect();
    assert_eq!(ids, ["data", "more", "rootfs"]);
    assert_eq!(vm.append.as_deref(), Some("quiet"));
    // Now another may be root.
    apply_drive(&mut vm, &drive("more", "/more", true)).unwrap();
    assert_eq!(vm.disk[0].id.as_deref(), Some("more"));

    let long = "d".repeat(MAX_DRIVE_ID_BYTES + 1);
    let err = apply_drive(&mut vm, &drive(&long, "/x", false)).unwrap_err();
    assert!(err.to_string().contains("serial"), "{err}");
    assert!(apply_drive(&mut vm, &drive("x", "", false)).is_err());
    assert_eq!(vm.disk.len(), 3);
    vm.kernel = Some("/k".into());
    vm.validate().unwrap();
}

#[test]
fn apply_network_vsock_balloon() {
    let mut c = ApiConfig::new(VmConfig {
        net: vec!["tap=tap0".parse().unwrap()],
        ..Default::default()
    });
    let iface = |id: &str, tap: &str, mac: Option<&str>| NetworkInterface {
        iface_id: id.into(),
        host_dev_name: tap.into(),
        guest_mac: mac.map(str::to_string),
        mtu: None,
        rx_rate_limiter: None,
        tx_rate_limiter: None,
    };
    c.apply_network_interface(&iface("eth1", "tap1", Some("02:00:00:00:00:01")))
        .unwrap();
    assert_eq!(c.iface_ids, ["tap0", "eth1"]);
    // The same id replaces, keeping its place.
    c.apply_network_interface(&iface("eth1", "tap2", None))
        .unwrap();
    assert_eq!(c.vm.net.len(), 2);
    assert_eq!(c.vm.net[1].tap, "tap2");
    let err = c
        .apply_network_interface(&iface("eth2", "tap0", None))
        .unwrap_err();
    assert!(err.to_string().contains("\"tap0\""), "{err}");
    c.apply_network_interface(&iface("eth2", "tap3", Some("02:00:00:00:00:09")))
        .unwrap();
    let err = c
        .apply_network_interface(&iface("eth3", "tap4", Some("02:00:00:00:00:09")))
        .unwrap_err();
    assert!(matches!(
        err,
        ApiError::NetworkConflict {
            what: "guest_mac",
            ..
        }
    ));

    let vsock = Vsock {
        guest_cid: 7,
        uds_path: "/v.sock".into(),
        vsock_id: None,
    };
    c.apply(&ApiRequest::PutVsock(vsock)).unwrap();
    assert_eq!(c.vm.vsock.as_ref().map(|v| v.cid), Some(7));

    let err = c
        .apply(&ApiRequest::PatchBalloon(BalloonUpdate { amount_mib: 8 }))
        .unwrap_err();
    assert!(matches!(err, ApiError::BalloonNotConfigured));
    assert_eq!(c.balloon(), None);
    let balloon = Balloon {
        amount_mib: 16,
        deflate_on_oom: true,
        stats_polling_interval_s: None,
        free_page_hinting: None,
        free_page_reporting: None,
    };
    c.apply(&ApiRequest::PutBalloon(balloon.clone())).unwrap();
    assert_eq!(c.vm.balloon.as_ref().unwrap().target, MemorySize(16 << 20));
    c.apply(&ApiRequest::PatchBalloon(BalloonUpdate { amount_mib: 8 }))
        .unwrap();
    assert_eq!(c.balloon().unwrap().amount_mib, 8);
    c.apply(&ApiRequest::PutEntropy(EntropyDevice::default()))
        .unwrap();
    assert!(c.vm.rng);
}

#[test]
fn vm_config_in_firecracker_shape() {
    let empty = serde_json::to_value(vm_config_to_firecracker(&VmConfig::default())).unwrap();
    assert_eq!(
        empty,
        serde_json::json!({
            "balloon": null, "drives": [], "boot-source": null,
            "machine-config": {"vcpu_count": 1, "mem_size_mib": 256, "smt": false,
                               "track_dirty_pages": false, "huge_pages": "None"},
            "network-interfaces": [], "vsock": null, "entropy": null
        })
    );

    let vm: VmConfig = serde_json::from_str(
        r#"{"kernel": "/k", "initrd": "/i", "append": "quiet root=/dev/vda rw",
            "vcpus": 2, "memory": "1G", "hugepages": true,
            "disk": [{"path": "/root.img", "id": "rootfs"}, {"path": "/d.img", "read_only": true}],
            "net": [{"tap": "tap0", "mac": "02:00:00:00:00:01"}],
            "vsock": {"cid": 3, "socket": "/v"}, "rng": true,
            "balloon": {"target": "64M", "deflate_on_oom": true}}"#,
    )
    .unwrap();
    let mut api = ApiConfig::new(vm.clone());
    api.iface_ids = vec!["eth0".into()];
    api.vm.track_dirty_pages = true;
    let full = api.to_firecracker();
    let v = serde_json::to_value(&full).unwrap();
    assert_eq!(
        v["boot-source"],
        serde_json::json!({"kernel_image_path": "/k", "initrd_path": "/i",
            "boot_args": format!("{} quiet", crate::DEFAULT_CMDLINE)})
    );
    assert_eq!(
        v["machine-config"],
        serde_json::json!({"vcpu_count": 2, "mem_size_mib": 1024, "smt": false,
            "track_dirty_pages": true, "huge_pages": "Transparent"})
    );
    assert_eq!(
        v["drives"],
        serde_json::json!([
            {"drive_id": "rootfs", "path_on_host": "/root.img", "is_root_device": true,
             "is_read_only": false, "cache_type": "Writeback", "io_engine": "Sync"},
            {"drive_id": "disk1", "path_on_host": "/d.img", "is_root_device": false,
             "is_read_only": true, "cache_type": "Writeback", "io_engine": "Sync"}
        ])
    );
    assert_eq!(
        v["network-interfaces"],
        serde_json::json!([{"iface_id": "eth0", "host_dev_name": "tap0",
            "guest_mac": "02:00:00:00:00:01"}])
    );
    assert_eq!(
        v["vsock"],
        serde_json::json!({"guest_cid": 3, "uds_path": "/v"})
    );
    assert_eq!(v["entropy"], serde_json::json!({}));
    assert_eq!(
        v["balloon"],
        serde_json::json!({"amount_mib": 64, "deflate_on_oom": true})
    );
    // Without the ApiConfig: interfaces are known by their taps.
    let plain = vm_config_to_firecracker(&vm);
    assert_eq!(plain.network_interfaces[0].iface_id, "tap0");

    // Replaying the answer as requests onto a fresh configuration gives the same VM.
    let mut replay = ApiConfig::default();
    let mut requests = vec![
        ApiRequest::PutBootSource(full.boot_source.clone().unwrap()),
        ApiRequest::PutMachineConfig(full.machine_config.clone()),
        ApiRequest::PutVsock(full.vsock.clone().unwrap()),
        ApiRequest::PutEntropy(EntropyDevice::default()),
        ApiRequest::PutBalloon(full.balloon.clone().unwrap()),
    ];
    requests.extend(full.drives.iter().cloned().map(ApiRequest::PutDrive));
    requests.extend(
        full.network_interfaces
            .iter()
            .cloned()
            .map(ApiRequest::PutNetworkInterface),
    );
    for request in &requests {
        assert!(replay.apply(request).unwrap(), "{request:?}");
    }
    assert_eq!(replay.to_firecracker(), full);
    // The command line the VMM builds: the base text, then every appended piece.
    let effective = |c: &VmConfig| {
        let base = c.cmdline.as_deref().unwrap_or(crate::DEFAULT_CMDLINE);
        std::iter::once(base)
            .chain(c.append.iter().map(String::as_str))
            .filter(|p| !p.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(effective(&replay.vm), effective(&vm));
    assert_eq!(replay.vm.disk[1].id.as_deref(), Some("disk1"));
    assert_eq!(replay.vm.net, vm.net);
    assert_eq!(
        (replay.vm.vcpus, replay.vm.memory, replay.vm.hugepages),
        (vm.vcpus, vm.memory, vm.hugepages)
    );
}

/// What the fuzz target checks, on a fixed pseudo-random sample, so that `cargo test` covers
/// it too: any bytes in any chunks give requests or 4xx responses that serialize, never a
/// panic, and the reader holds at most what it was given.
#[test]
fn arbitrary_bytes_in_arbitrary_chunks() {
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let pieces: Vec<Vec<u8>> = vec![
        http("PUT", "/drives/rootfs", DRIVE),
        http("PATCH", "/vm", r#"{"state": "Paused"}"#),
        http_get("GET", "/"),
        b"Content-Length: 5\r\n".to_vec(),
        b"Transfer-Encoding: chunked\r\n".to_vec(),
        b"\r\n".to_vec(),
        b"\n".to_vec(),
        b"{\"".to_vec(),
        vec![0xff, 0x00, b'\r'],
    ];
    for _ in 0..2000 {
        let mut input = Vec::new();
        for _ in 0..rand() % 8 {
            let piece = &pieces[(rand() % pieces.len() as u64) as usize];
            let cut = (rand() % (piece.len() as u64 + 1)) as usize;
            input.extend_from_slice(&piece[..cut]);
            if rand() % 4 == 0 {
                input.push(rand() as u8);
            }
        }
        let mut reader = RequestReader::new();
        let mut rest = input.as_slice();
        while !rest.is_empty() {
            let n = ((rand() % 17) as usize + 1).min(rest.len());
            let (chunk, tail) = rest.split_at(n);
            rest = tail;
            let mut result = reader.push(chunk);
            loop {
                match result {
                    Ok(None) => break,
                    Ok(Some(_)) => {}
                    Err(response) => {
                        assert!((400..500).contains(&response.status), "{response:?}");
                        assert!(response.fault_message().is_some());
                        assert!(!response.to_http().is_empty());
                    }
                }
                result = reader.push(&[]);
            }
            assert!(reader.buffered() <= input.len());
        }
    }
}

#[test]
fn rate_limiters_cache_type_and_io_engine_are_configured_and_reported() {
    let limiter = |size: u64| RateLimiterConfig {
        bandwidth: Some(TokenBucketConfig {
            size,
            one_time_burst: Some(7),
            refill_time: 100,
        }),
        ops: None,
    };
    let mut api = ApiConfig::new(VmConfig::default());
    let drive: Drive = serde_json::from_str(
        r#"{"drive_id": "data", "path_on_host": "/d.img", "is_root_device": false,
            "cache_type": "Writeback", "io_engine": "Async",
            "rate_limiter": {"bandwidth": {"size": 4096, "one_time_burst": 7, "refill_time": 100}}}"#,
    )
    .unwrap();
    api.apply(&ApiRequest::PutDrive(drive)).unwrap();
    let disk = &api.vm.disk[0];
    assert_eq!(disk.rate_limiter, Some(limiter(4096)));
    assert_eq!(disk.cache_type, CacheType::Writeback);
    assert_eq!(disk.io_engine, Some(IoEngine::Async));

    let iface: NetworkInterface = serde_json::from_str(
        r#"{"iface_id": "eth0", "host_dev_name": "tap0",
            "rx_rate_limiter": {"bandwidth": {"size": 1000, "one_time_burst": 7, "refill_time": 100}},
            "tx_rate_limiter": {"ops": {"size": 10, "refill_time": 1000}}}"#,
    )
    .unwrap();
    api.apply(&ApiRequest::PutNetworkInterface(iface)).unwrap();
    let net = &api.vm.net[0];
    assert_eq!(net.rx_rate_limiter, Some(limiter(1000)));
    assert_eq!(
        net.tx_rate_limiter.and_then(|l| l.ops),
        Some(TokenBucketConfig {
            size: 10,
            one_time_burst: None,
            refill_time: 1000
        })
    );

    let entropy: EntropyDevice = serde_json::from_str(
        r#"{"rate_limiter": {"bandwidth": {"size": 64, "one_time_burst": 7, "refill_time": 100}}}"#,
    )
    .unwrap();
    api.apply(&ApiRequest::PutEntropy(entropy)).unwrap();
    assert!(api.vm.rng);
    assert_eq!(api.vm.rng_rate_limiter, Some(limiter(64)));

    let v = serde_json::to_value(api.to_firecracker()).unwrap();
    assert_eq!(v["drives"][0]["cache_type"], "Writeback");
    assert_eq!(v["drives"][0]["io_engine"], "Async");
    assert_eq!(
        v["drives"][0]["rate_limiter"],
        serde_json::json!({"bandwidth": {"size": 4096, "one_time_burst": 7, "refill_time": 100}})
    );
    assert_eq!(
        v["network-interfaces"][0]["rx_rate_limiter"]["bandwidth"]["size"],
        1000
    );
    assert_eq!(
        v["network-interfaces"][0]["tx_rate_limiter"]["ops"]["size"],
        10
    );
    assert_eq!(v["entropy"]["rate_limiter"]["bandwidth"]["size"], 64);

    // The config round-trips through JSON, and old config files (without the new keys) parse.
    let text = serde_json::to_string(&api.vm).unwrap();
    assert_eq!(serde_json::from_str::<VmConfig>(&text).unwrap(), api.vm);
    let old: VmConfig = serde_json::from_str(
        r#"{"disk": [{"path": "/d.img"}], "net": [{"tap": "tap0"}], "rng": true}"#,
    )
    .unwrap();
    // Config files and --disk honour flushes unless they say cache=unsafe.
    assert_eq!(old.disk[0].cache_type, CacheType::Writeback);
    let flag: crate::DiskConfig = "path=/d,cache=unsafe".parse().unwrap();
    assert_eq!(flag.cache_type, CacheType::Unsafe);
    assert!("path=/d,cache=fast".parse::<crate::DiskConfig>().is_err());
    assert_eq!(old.disk[0].rate_limiter, None);
    assert_eq!(old.net[0].rx_rate_limiter, None);
    assert_eq!(old.rng_rate_limiter, None);
    assert!(old.rng);
    // A drive PUT without a cache type is Unsafe, and reported so.
    let plain: Drive = serde_json::from_str(
        r#"{"drive_id": "p", "path_on_host": "/p.img", "is_root_device": false}"#,
    )
    .unwrap();
    api.apply(&ApiRequest::PutDrive(plain)).unwrap();
    let v = serde_json::to_value(api.to_firecracker()).unwrap();
    assert_eq!(v["drives"][1]["cache_type"], "Unsafe");
    assert_eq!(v["drives"][1]["io_engine"], "Sync");
}

#[test]
fn disk_format_on_the_flag_in_files_and_drives() {
    let flag: crate::DiskConfig = "path=/d,format=qcow2".parse().unwrap();
    assert_eq!(flag.format, Some(crate::DiskFormat::Qcow2));
    assert_eq!(flag.to_string(), "path=/d,format=qcow2");
    let detected: crate::DiskConfig = "path=/d".parse().unwrap();
    assert_eq!(detected.format, None, "absent: detected by magic");
    let err = "path=/d,format=vmdk"
        .parse::<crate::DiskConfig>()
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown disk format \"vmdk\""), "{err}");
    assert!(!err.contains('\n'), "{err}");

    let file: crate::DiskConfig =
        serde_json::from_str(r#"{"path": "/d", "format": "layered"}"#).unwrap();
    assert_eq!(file.format, Some(crate::DiskFormat::Layered));

    let mut c = ApiConfig::default();
    let mut d = drive("root", "/r.qcow2", true);
    d.format = Some(crate::DiskFormat::Qcow2);
    apply_drive(&mut c.vm, &d).unwrap();
    assert_eq!(c.vm.disk[0].format, Some(crate::DiskFormat::Qcow2));
    let parsed: Drive = serde_json::from_str(
        r#"{"drive_id": "a", "path_on_host": "/a", "is_root_device": false, "format": "raw"}"#,
    )
    .unwrap();
    assert_eq!(parsed.format, Some(crate::DiskFormat::Raw));
    let plain = serde_json::to_string(&drive("a", "/a", false)).unwrap();
    assert!(
        !plain.contains("format"),
        "Firecracker's drives stay as they were: {plain}"
    );
}
