//! Snapshot state files made from a real one: the tiny PVH guest (with a disk, a vsock, an
//! entropy device and a balloon) is booted, paused and snapshotted once per process, its state
//! body decoded to JSON, and each input is a list of mutations of that JSON: a value at a path
//! replaced by a generated value of any JSON type, a key removed, an array's element repeated
//! or the array cut short, a number set to a boundary value. The result gets a valid header
//! and checksum for this host (which would stop every mutation otherwise) and goes to the real
//! loader: `BuiltVm::restore` with the snapshot's own memory file, which reads and checks the
//! state and builds the VM from it, then `Vmm::start`, paused.
//!
//! Checked: nothing panics; a refusal is a typed error whose message is one line; a VM that
//! restores and starts snapshots again, and is torn down at the end of the input.

#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::arbitrary::{self, Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use vmm_api::{
    InstanceState, MemorySize, SerialMode, SnapshotCreateParams, SnapshotType, VmConfig,
};
use vmm_core::snapshot::SnapshotFile;
use vmm_core::{error_chain, BuiltVm, RestoreSource, StartMode, Vmm};

#[path = "common/tiny_guest.rs"]
mod tiny_guest;

/// Mutations one input makes at most.
const MAX_MUTATIONS: usize = 8;
/// How deep a path goes into the JSON at most.
const MAX_DEPTH: usize = 12;

/// The snapshot every input starts from.
struct Original {
    dir: PathBuf,
    body: Value,
    mem: PathBuf,
}

/// Boots the tiny guest, pauses it and writes a full snapshot (and a diff one, for the seeds)
/// in a folder of this process.
fn original() -> &'static Original {
    static ORIGINAL: OnceLock<Original> = OnceLock::new();
    ORIGINAL.get_or_init(|| {
        let (guest, dir) = tiny_guest::tiny_guest_and_scratch("snapshot_state");
        let disk = dir.join("disk.img");
        std::fs::write(&disk, vec![0u8; 64 << 10]).expect("the disk image");
        let config = VmConfig {
            kernel: Some(guest),
            cmdline: Some("console=ttyS0".into()),
            memory: MemorySize(2 << 20),
            serial: SerialMode::File(dir.join("serial")),
            rng: true,
            balloon: Some("target=0".parse().expect("a balloon")),
            disk: vec![format!("path={},id=rootfs", disk.display())
                .parse()
                .expect("a disk")],
            vsock: Some(
                format!("cid=3,socket={}", dir.join("vsock.sock").display())
                    .parse()
                    .expect("a vsock"),
            ),
            track_dirty_pages: true,
            ..VmConfig::default()
        };
        let built = BuiltVm::build(&config).expect("the tiny guest builds");
        let mut vmm = Vmm::start(built, StartMode::Running).expect("the tiny guest starts");
        // Let it print its marker and halt, so the state is a guest that ran.
        std::thread::sleep(std::time::Duration::from_millis(50));
        vmm.pause().expect("pause");
        vmm.snapshot(&params(&dir, "vm", SnapshotType::Full))
            .expect("a full snapshot");
        vmm.snapshot(&params(&dir, "diff", SnapshotType::Diff))
            .expect("a diff snapshot");
        vmm.shutdown();
        let bytes = std::fs::read(dir.join("vm.state")).expect("the state file");
        let body = SnapshotFile::read_from::<Value>(&bytes).expect("the state decodes");
        if let Some(seeds) = std::env::var_os("SNAPSHOT_STATE_SEEDS") {
            // `SNAPSHOT_STATE_SEEDS=DIR`: the real files, for the vmm_core_snapshot corpus.
            for (from, to) in [
                ("vm.state", "seed-real-state"),
                ("vm.mem", "seed-real-mem"),
                ("diff.state", "seed-real-diff-state"),
                ("diff.mem", "seed-real-diff-mem"),
            ] {
                let _ = std::fs::copy(dir.join(from), Path::new(&seeds).join(to));
            }
        }
        Original {
            mem: dir.join("vm.mem"),
            dir,
            body,
        }
    })
}

fn params(dir: &Path, name: &str, snapshot_type: SnapshotType) -> SnapshotCreateParams {
    SnapshotCreateParams {
        snapshot_type,
        snapshot_path: dir
            .join(format!("{name}.state"))
            .to_string_lossy()
            .into_owned(),
        mem_file_path: dir
            .join(format!("{name}.mem"))
            .to_string_lossy()
            .into_owned(),
        key_file: None,
    }
}

/// A JSON value of any type, a few levels deep.
#[derive(Arbitrary, Debug)]
enum Junk {
    Null,
    Bool(bool),
    Small(i8),
    Int(i64),
    Big(u64),
    Float(f64),
    Text(String),
    List(Vec<Junk>),
    Object(Vec<(String, Junk)>),
}

impl Junk {
    fn value(&self, depth: u8) -> Value {
        match self {
            Junk::Null => Value::Null,
            Junk::Bool(b) => json!(b),
            Junk::Small(n) => json!(n),
            Junk::Int(n) => json!(n),
            Junk::Big(n) => json!(n),
            Junk::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
            // Every path in the state stays inside the fuzzer's folder.
            Junk::Text(s) => json!(s.replace('/', "_")),
            Junk::List(items) if depth < 3 => {
                Value::Array(items.iter().take(8).map(|j| j.value(depth + 1)).collect())
            }
            Junk::Object(fields) if depth < 3 => Value::Object(
                fields
                    .iter()
                    .take(8)
                    .map(|(k, v)| (k.clone(), v.value(depth + 1)))
                    .collect(),
            ),
            Junk::List(_) | Junk::Object(_) => json!([]),
        }
    }
}

const BOUNDARIES: [i128; 12] = [
    0,
    1,
    -1,
    255,
    256,
    65_536,
    u32::MAX as i128,
    1 << 32,
    i64::MAX as i128,
    i64::MIN as i128,
    u64::MAX as i128,
    1 << 53,
];

/// One change to the state's JSON. A path is a list of choices: at each object the key with
/// that index (mod its length), at each array the element.
#[derive(Arbitrary, Debug)]
enum Mutation {
    Replace {
        path: Vec<u8>,
        value: Junk,
    },
    Remove {
        path: Vec<u8>,
    },
    /// Repeats an element of the array at `path` (the array's last element by default).
    Repeat {
        path: Vec<u8>,
        times: u8,
    },
    Truncate {
        path: Vec<u8>,
        len: u8,
    },
    /// The number at (or first under) `path` set to a boundary value.
    Boundary {
        path: Vec<u8>,
        which: u8,
    },
}

/// The value `path` leads to; with `to_leaf`, on to the first scalar under it.
fn walk<'a>(v: &'a mut Value, path: &[u8], to_leaf: bool) -> &'a mut Value {
    let (choice, rest) = match path.split_first() {
        Some((c, rest)) => (usize::from(*c), rest),
        None if to_leaf => (0, path),
        None => return v,
    };
    let descends = match &*v {
        Value::Object(map) => !map.is_empty(),
        Value::Array(items) => !items.is_empty(),
        _ => false,
    };
    if !descends {
        return v;
    }
    match v {
        Value::Object(map) => {
            let i = choice % map.len();
            let child = map.values_mut().nth(i).expect("in range");
            walk(child, rest, to_leaf)
        }
        Value::Array(items) => {
            let i = choice % items.len();
            walk(&mut items[i], rest, to_leaf)
        }
        _ => unreachable!("only containers descend"),
    }
}

fn apply(body: &mut Value, mutation: &Mutation) {
    match mutation {
        Mutation::Replace { path, value } => {
            *walk(body, &path[..path.len().min(MAX_DEPTH)], false) = value.value(0)
        }
        Mutation::Remove { path } => {
            let (last, parent) = path.split_last().map_or((0, &[][..]), |(l, p)| (*l, p));
            match walk(body, parent, false) {
                Value::Object(map) if !map.is_empty() => {
                    let key = map
                        .keys()
                        .nth(usize::from(last) % map.len())
                        .expect("in range")
                        .clone();
                    map.remove(&key);
                }
                Value::Array(items) if !items.is_empty() => {
                    let i = usize::from(last) % items.len();
                    items.remove(i);
                }
                _ => {}
            }
        }
        Mutation::Repeat { path, times } => {
            if let Value::Array(items) = walk(body, path, false) {
                if let Some(last) = items.last().cloned() {
                    items.extend(std::iter::repeat_n(last, usize::from(*times % 16)));
                }
            }
        }
        Mutation::Truncate { path, len } => {
            if let Value::Array(items) = walk(body, path, false) {
                items.truncate(usize::from(*len));
            }
        }
        Mutation::Boundary { path, which } => {
            let leaf = walk(body, path, true);
            let n = BOUNDARIES[usize::from(*which) % BOUNDARIES.len()];
            *leaf = if n < 0 {
                json!(n as i64)
            } else {
                json!(n as u64)
            };
        }
    }
}

/// A refusal must say what it is in one line.
fn check_error(e: &vmm_core::Error) {
    let line = e.to_string();
    assert!(!line.contains('\n'), "a multi-line error: {line:?}");
    let chain = error_chain(e);
    assert!(!chain.contains('\n'), "a multi-line error chain: {chain:?}");
}

fuzz_target!(|data: &[u8]| {
    let original = original();
    let mut u = Unstructured::new(data);
    let mut body = original.body.clone();
    let mut count = 0;
    while count < MAX_MUTATIONS && !u.is_empty() {
        let Ok(mutation) = Mutation::arbitrary(&mut u) else {
            break;
        };
        apply(&mut body, &mutation);
        count += 1;
    }
    let bytes = SnapshotFile::encode(&body).expect("JSON encodes");
    let state = original.dir.join("input.state");
    std::fs::write(&state, &bytes).expect("the state file");
    let source = RestoreSource {
        state,
        mem: original.mem.clone(),
        ..RestoreSource::default()
    };
    let built = match BuiltVm::restore(&source) {
        Ok(built) => built,
        Err(e) => return check_error(&e),
    };
    let mut vmm = match Vmm::start(built, StartMode::Paused) {
        Ok(vmm) => vmm,
        Err(e) => return check_error(&e),
    };
    assert_eq!(vmm.state(), InstanceState::Paused);
    let again = params(&original.dir, "again", SnapshotType::Full);
    if let Err(e) = vmm.snapshot(&again) {
        panic!("a restored VM did not snapshot again: {}", error_chain(&e));
    }
    vmm.shutdown();
});
