//! Arbitrary bytes as a snapshot state file: the reader must refuse them with an error or decode
//! them, never panic, and never allocate more than the declared-body limit allows.
//!
//! Each input is used twice: as a whole state file (header and body, as read from disk), and as
//! a body wrapped in a valid header for this host, so the checksum does not keep the fuzzer away
//! from decoding the body. A decoded state is written again and must read back the same, and the
//! memory file layout inside it is checked against the guest layout rules.

#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use serde::{Deserialize, Serialize};
use vmm_core::snapshot::{CpuIdentity, SnapshotFile, SnapshotHeader, HEADER_LEN, MAX_BODY_LEN};
use vmm_memory::snapshot::MemoryFileLayout;

/// A state shaped like a VM's: vCPUs, devices by id, the memory file layout.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct FuzzState {
    version: u32,
    vcpus: Vec<Vcpu>,
    devices: BTreeMap<String, Device>,
    memory: Option<MemoryFileLayout>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Vcpu {
    id: u8,
    regs: [u64; 4],
    msrs: Vec<(u32, u64)>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Device {
    Serial { ier: u8, lcr: u8, buffer: Vec<u8> },
    Block { path: String, features: u64 },
    Rng,
}

fn check(state: FuzzState) {
    if let Some(layout) = &state.memory {
        let _ = layout.validate();
        let _ = (layout.ram_bytes(), layout.file_len());
    }
    let bytes = SnapshotFile::encode(&state).expect("a decoded state encodes again");
    assert!(bytes.len() as u64 <= HEADER_LEN as u64 + MAX_BODY_LEN);
    let again: FuzzState = SnapshotFile::read_from(&bytes).expect("an encoded state reads back");
    assert_eq!(again, state);
}

fuzz_target!(|data: &[u8]| {
    // As a whole file.
    if let Ok(header) = SnapshotHeader::parse(data) {
        assert!(header.body_len <= MAX_BODY_LEN);
        // Past a CPU field the fuzzer changed (and a header checksum it fixed), too.
        if let Ok(state) = SnapshotFile::read_from_for_cpu::<FuzzState>(data, &header.cpu) {
            check(state);
        }
    }
    match SnapshotFile::read_from::<FuzzState>(data) {
        Ok(state) => check(state),
        Err(e) => {
            let _ = e.to_string();
        }
    }
    let _ = SnapshotFile::read_from::<serde_json::Value>(data);

    // As a body.
    if data.len() as u64 <= MAX_BODY_LEN {
        let mut file = SnapshotHeader::for_body(data, CpuIdentity::host())
            .to_bytes()
            .to_vec();
        file.extend_from_slice(data);
        if let Ok(state) = SnapshotFile::read_from::<FuzzState>(&file) {
            check(state);
        }
    }
});
