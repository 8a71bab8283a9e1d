//! `vmm disk ...`: disk image tools. Creating, cloning, sealing and committing images of the
//! layered copy-on-write format, inspecting and checking images of any format, converting between
//! formats, and importing raw images into a deduplicated store.
//!
//! This module parses and checks the arguments, prints results and errors (one line, `vmm:
//! error: ...`, exit code 1); the work is vmm-disk's, one call per action.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde::Serialize;
use vmm_api::{DiskFormat, MemorySize};
use vmm_disk::{layered, DiskError, ImageFile, OpenOptions};

/// The disk subcommands.
#[derive(Subcommand, Debug)]
pub enum DiskCommand {
    /// Create an image in the layered format: empty, of --size, or a copy-on-write layer over
    /// --base (any format; its size unless --size says otherwise).
    Create(CreateArgs),
    /// Make NEW a writable copy-on-write clone of SRC (a layered image); SRC is not changed.
    Clone {
        /// The image to clone.
        #[arg(value_name = "SRC")]
        src: PathBuf,
        /// The clone to create (must not exist).
        #[arg(value_name = "NEW")]
        new: PathBuf,
    },
    /// Seal the current top layer of a layered image (read-only from now on) and start a new
    /// one over it; prints the sealed layer.
    Snapshot {
        /// The layered image.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Merge the top layer of a layered image into the layer below it.
    Commit {
        /// The layered image.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Print an image's format, size and layers.
    Info {
        /// The image (any format).
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Check an image's metadata. Exit code 0 when clean, 1 with a list of the problems found.
    Check {
        /// The image (any format).
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Copy an image into a new image of another format.
    Convert {
        /// The image to read (any format).
        #[arg(value_name = "IN")]
        input: PathBuf,
        /// The image to write (must not exist).
        #[arg(value_name = "OUT")]
        output: PathBuf,
        /// OUT's format: raw, qcow2 or layered.
        #[arg(long, value_name = "FORMAT")]
        format: String,
    },
    /// Import raw images into a store where equal blocks are kept once; each becomes a layered
    /// image in DIR.
    Import(ImportArgs),
    /// Write a dm-verity hash file for an image (as `veritysetup format` does) and print its
    /// root hash in hex; serve it with `--disk path=IMG,read_only=on,verity=HASHFILE,root_hash=HEX`.
    VerityFormat(VerityFormatArgs),
    /// Create a LUKS-encrypted image (aes-xts-plain64, one keyslot opened by --key-file): a
    /// new file with a --size payload, or, without --size, over an existing file.
    LuksFormat(LuksFormatArgs),
}

/// `vmm disk verity-format`.
#[derive(Args, Debug)]
pub struct VerityFormatArgs {
    /// The image to protect (any format).
    #[arg(value_name = "IMG")]
    pub image: PathBuf,
    /// The hash file to write (must not exist).
    #[arg(value_name = "HASHFILE")]
    pub hash_file: PathBuf,
    /// Bytes per data block: a power of two from 512 to 4096.
    #[arg(long, value_name = "BYTES", default_value_t = 4096)]
    pub data_block_size: u32,
    /// Bytes per hash block: a power of two from 512 to 4096.
    #[arg(long, value_name = "BYTES", default_value_t = 4096)]
    pub hash_block_size: u32,
    /// The hash: sha256, sha224, sha384 or sha512.
    #[arg(long, value_name = "HASH", default_value = "sha256")]
    pub hash: String,
    /// The salt in hex, or "-" for none; random (32 bytes) when absent.
    #[arg(long, value_name = "HEX")]
    pub salt: Option<String>,
}

/// `vmm disk luks-format`.
#[derive(Args, Debug)]
pub struct LuksFormatArgs {
    /// The image (new with --size; otherwise an existing file, whose start the header replaces).
    #[arg(value_name = "IMG")]
    pub file: PathBuf,
    /// The key file, used whole as it is (as cryptsetup's --key-file).
    #[arg(long, value_name = "KEY")]
    pub key_file: PathBuf,
    /// The payload's size: 10G, 512M, 4096K, or a plain number of MiB.
    #[arg(long, value_name = "SIZE")]
    pub size: Option<String>,
    /// luks2 (cryptsetup's default, argon2id) or luks1 (what qemu-img reads, pbkdf2).
    #[arg(long = "type", value_name = "TYPE", default_value = "luks2")]
    pub luks_type: String,
    /// Use PBKDF2-SHA256 with this many iterations instead of argon2id (at least 1000).
    #[arg(long, value_name = "N")]
    pub pbkdf2_iterations: Option<u32>,
    /// Write the header to this file instead (cryptsetup's --header).
    #[arg(long, value_name = "FILE")]
    pub header: Option<PathBuf>,
    /// Fill the payload with encrypted zeros (otherwise it reads as garbage until written).
    #[arg(long)]
    pub zero: bool,
}

/// `vmm disk create`.
#[derive(Args, Debug)]
pub struct CreateArgs {
    /// The image to create (must not exist).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// The disk's size: 10G, 512M, 4096K, or a plain number of MiB.
    #[arg(long, value_name = "SIZE")]
    pub size: Option<String>,
    /// An image (any format) the new one starts as a copy-on-write layer over.
    #[arg(long, value_name = "FILE")]
    pub base: Option<PathBuf>,
}

/// `vmm disk import`.
#[derive(Args, Debug)]
pub struct ImportArgs {
    /// Keep equal blocks once (the only mode there is; the flag says it).
    #[arg(long)]
    pub dedup: bool,
    /// The block hash: sha256.
    #[arg(long, value_name = "HASH", default_value = "sha256")]
    pub hash: String,
    /// The images to import.
    #[arg(value_name = "IN", required = true)]
    pub inputs: Vec<PathBuf>,
    /// The store's directory (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// The block hashes `vmm disk import --hash` takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockHash {
    /// SHA-256 (a hit is also compared byte for byte).
    Sha256,
}

/// Why a disk command failed; printed as one line.
#[derive(Debug, thiserror::Error)]
pub enum DiskCliError {
    /// A bad argument value.
    #[error("{0}")]
    Usage(String),
    /// An input that does not exist or cannot be read.
    #[error("{}", path.display())]
    Input {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// An output that exists already.
    #[error("{} exists already; it is never overwritten", .0.display())]
    Exists(PathBuf),
    /// vmm-disk failed.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// Writing a verity hash file failed.
    #[error(transparent)]
    Verity(#[from] vmm_disk::verity::Error),
}

/// What `vmm disk info` prints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ImageInfo {
    /// The image.
    pub file: PathBuf,
    /// Its format.
    pub format: String,
    /// The disk's size in bytes, as the guest sees it.
    pub virtual_size: u64,
    /// Bytes the image takes on the host.
    pub disk_usage: u64,
    /// The image it is a copy-on-write layer over, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base: Option<PathBuf>,
}

/// Runs a disk subcommand; prints its result, or its error as one line.
pub fn main(command: DiskCommand) -> ExitCode {
    match run(command) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("vmm: error: {}", vmm_core::error_chain(&error));
            ExitCode::from(1)
        }
    }
}

fn run(command: DiskCommand) -> Result<ExitCode, DiskCliError> {
    match command {
        DiskCommand::Create(args) => {
            let size = args.size.as_deref().map(parse_disk_size).transpose()?;
            if size.is_none() && args.base.is_none() {
                return Err(DiskCliError::Usage(
                    "vmm disk create needs --size, --base or both".into(),
                ));
            }
            if let Some(base) = &args.base {
                existing(base)?;
            }
            absent(&args.file)?;
            create_image(&args.file, size, args.base.as_deref())?;
            println!("{}", args.file.display());
        }
        DiskCommand::Clone { src, new } => {
            existing(&src)?;
            absent(&new)?;
            clone_image(&src, &new)?;
            println!("{}", new.display());
        }
        DiskCommand::Snapshot { file } => {
            existing(&file)?;
            let sealed = snapshot_image(&file)?;
            println!("{}", sealed.display());
        }
        DiskCommand::Commit { file } => {
            existing(&file)?;
            commit_image(&file)?;
        }
        DiskCommand::Info { file, json } => {
            existing(&file)?;
            let format = vmm_disk::detect(&file)?;
            // Plain structs of strings and numbers: serialization cannot fail.
            if format == vmm_disk::Format::Layered {
                let info = layered::info(&file).map_err(DiskError::from)?;
                if json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&info).unwrap_or_default()
                    );
                } else {
                    print!("file: {}\nformat: layered\n{info}", file.display());
                }
            } else {
                let info = image_info(&file, format)?;
                if json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&info).unwrap_or_default()
                    );
                } else {
                    print!("{}", info_text(&info));
                }
            }
        }
        DiskCommand::Check { file } => {
            existing(&file)?;
            let problems = check_image(&file)?;
            if !problems.is_empty() {
                println!("{}: {} problem(s)", file.display(), problems.len());
                for problem in &problems {
                    println!("  {problem}");
                }
                return Ok(ExitCode::from(1));
            }
            println!("{}: no problems found", file.display());
        }
        DiskCommand::Convert {
            input,
            output,
            format,
        } => {
            let format: DiskFormat = format.parse().map_err(DiskCliError::Usage)?;
            existing(&input)?;
            absent(&output)?;
            convert_image(&input, &output, format)?;
            println!("{}", output.display());
        }
        DiskCommand::LuksFormat(args) => return luks_format(args),
        DiskCommand::Import(args) => {
            let hash = parse_hash(&args.hash)?;
            if !args.dedup {
                return Err(DiskCliError::Usage(
                    "vmm disk import needs --dedup (it stores every block once)".into(),
                ));
            }
            for input in &args.inputs {
                existing(input)?;
            }
            let report = import_dedup(&args.inputs, &args.out, hash)?;
            println!(
                "{} non-zero blocks read ({} zero blocks not stored), {} stored in {}: dedup ratio {:.2}",
                report.blocks_seen,
                report.zero_blocks,
                report.blocks_stored,
                report.store.display(),
                report.ratio
            );
        }
        DiskCommand::VerityFormat(args) => {
            let options = verity_options(&args)?;
            existing(&args.image)?;
            absent(&args.hash_file)?;
            let root = vmm_disk::verity::format(&args.image, &args.hash_file, &options)?;
            println!("{root}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The options `vmm disk verity-format` asks for, checked.
pub fn verity_options(
    args: &VerityFormatArgs,
) -> Result<vmm_disk::verity::FormatOptions, DiskCliError> {
    use vmm_disk::verity::{from_hex, Algorithm, FormatOptions, MAX_BLOCK, MIN_BLOCK};
    for (flag, size) in [
        ("--data-block-size", args.data_block_size),
        ("--hash-block-size", args.hash_block_size),
    ] {
        if !size.is_power_of_two() || !(MIN_BLOCK..=MAX_BLOCK).contains(&size) {
            return Err(DiskCliError::Usage(format!(
                "{flag} {size}: a power of two from {MIN_BLOCK} to {MAX_BLOCK} is needed"
            )));
        }
    }
    let algorithm = Algorithm::from_name(&args.hash).ok_or_else(|| {
        DiskCliError::Usage(format!(
            "--hash {}: sha256, sha224, sha384 or sha512 is needed",
            args.hash
        ))
    })?;
    let salt = match args.salt.as_deref() {
        None => None,
        Some("-") => Some(Vec::new()),
        Some(hex) => Some(
            from_hex(hex)
                .filter(|s| s.len() <= vmm_disk::verity::MAX_SALT)
                .ok_or_else(|| {
                    DiskCliError::Usage(format!(
                        "--salt {hex}: hex of at most 256 bytes, or - for none, is needed"
                    ))
                })?,
        ),
    };
    Ok(FormatOptions {
        data_block_size: args.data_block_size,
        hash_block_size: args.hash_block_size,
        algorithm,
        salt,
    })
}

/// A disk size ("10G", "512M", a plain number of MiB, as `--memory` takes), more than 0.
pub fn parse_disk_size(text: &str) -> Result<u64, DiskCliError> {
    let size: MemorySize = text.parse().map_err(|_| {
        DiskCliError::Usage(format!(
            "invalid disk size {text:?}: use a number with K, M, G or T (a plain number is MiB)"
        ))
    })?;
    if size.0 == 0 {
        return Err(DiskCliError::Usage(format!(
            "invalid disk size {text:?}: a disk must be larger than 0 bytes"
        )));
    }
    Ok(size.0)
}

/// `--hash`'s value.
pub fn parse_hash(text: &str) -> Result<BlockHash, DiskCliError> {
    match text {
        "sha256" => Ok(BlockHash::Sha256),
        _ => Err(DiskCliError::Usage(format!(
            "unknown block hash {text:?} (sha256)"
        ))),
    }
}

/// `path` exists (an input).
fn existing(path: &Path) -> Result<(), DiskCliError> {
    std::fs::metadata(path)
        .map(drop)
        .map_err(|source| DiskCliError::Input {
            path: path.to_path_buf(),
            source,
        })
}

fn luks_format(args: LuksFormatArgs) -> Result<ExitCode, DiskCliError> {
    use vmm_disk::luks::{FormatKdf, FormatOptions, LuksVersion};
    let size = args.size.as_deref().map(parse_disk_size).transpose()?;
    let version = match args.luks_type.as_str() {
        "luks1" => LuksVersion::Luks1,
        "luks2" => LuksVersion::Luks2,
        other => {
            return Err(DiskCliError::Usage(format!(
                "unknown LUKS type {other:?} (luks1 or luks2)"
            )))
        }
    };
    let kdf = match (args.pbkdf2_iterations, version) {
        (Some(iterations), _) => FormatKdf::Pbkdf2 { iterations },
        (None, LuksVersion::Luks1) => FormatKdf::Pbkdf2 {
            iterations: 1_000_000,
        },
        (None, LuksVersion::Luks2) => FormatOptions::default().kdf,
    };
    if size.is_some() {
        absent(&args.file)?;
    } else {
        existing(&args.file)?;
    }
    if let Some(header) = &args.header {
        absent(header)?;
    }
    let key = vmm_disk::luks::read_key_file(&args.key_file).map_err(DiskError::from)?;
    let options = FormatOptions {
        version,
        kdf,
        header: args.header.clone(),
        zero_payload: args.zero,
        ..FormatOptions::default()
    };
    let info = vmm_disk::luks_format(&args.file, &key, size, &options).map_err(DiskError::from)?;
    println!(
        "{}: LUKS{} aes-xts-plain64 {}-bit key, payload at byte {}",
        args.file.display(),
        info.version,
        info.key_size * 8,
        info.payload_offset
    );
    Ok(ExitCode::SUCCESS)
}

/// `path` does not exist (an output).
fn absent(path: &Path) -> Result<(), DiskCliError> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => Err(DiskCliError::Exists(path.to_path_buf())),
        Err(_) => Ok(()),
    }
}

/// `vmm disk info`'s text form.
fn info_text(info: &ImageInfo) -> String {
    let mut text = format!(
        "file: {}\nformat: {}\nvirtual size: {} ({} bytes)\ndisk usage: {} bytes\n",
        info.file.display(),
        info.format,
        MemorySize(info.virtual_size),
        info.virtual_size,
        info.disk_usage
    );
    if let Some(base) = &info.base {
        text.push_str(&format!("base: {}\n", base.display()));
    }
    text
}

// The actions: each one call into vmm-disk, its result mapped for printing.

/// A new layered image at `file`.
fn create_image(file: &Path, size: Option<u64>, base: Option<&Path>) -> Result<(), DiskCliError> {
    Ok(layered::create(file, size, base).map_err(DiskError::from)?)
}

/// A clone of `src` at `new`.
fn clone_image(src: &Path, new: &Path) -> Result<(), DiskCliError> {
    Ok(layered::clone_image(src, new).map_err(DiskError::from)?)
}

/// Seals the top layer of `file`; the sealed layer's path.
fn snapshot_image(file: &Path) -> Result<PathBuf, DiskCliError> {
    Ok(layered::snapshot(file).map_err(DiskError::from)?)
}

/// Merges the layers of `file` into one.
fn commit_image(file: &Path) -> Result<(), DiskCliError> {
    Ok(layered::commit(file).map_err(DiskError::from)?)
}

/// What `vmm disk info` shows of a raw or qcow2 image: its format, sizes and backing file.
fn image_info(file: &Path, format: vmm_disk::Format) -> Result<ImageInfo, DiskCliError> {
    let image = vmm_disk::open_image(
        file,
        &OpenOptions {
            read_only: true,
            format: Some(format),
        },
    )?
    .into_image_file();
    let input = |source| DiskCliError::Input {
        path: file.to_path_buf(),
        source,
    };
    let disk_usage =
        std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(file).map_err(input)?) * 512;
    let base = match format {
        vmm_disk::Format::Qcow2 => {
            let mut head = vec![0u8; 64 << 10];
            let n = std::io::Read::read(&mut std::fs::File::open(file).map_err(input)?, &mut head)
                .map_err(input)?;
            head.truncate(n);
            vmm_disk::qcow2::Header::parse(&head, file, false)
                .map_err(DiskError::from)?
                .backing_file
                .map(PathBuf::from)
        }
        _ => None,
    };
    Ok(ImageInfo {
        file: file.to_path_buf(),
        format: format.to_string(),
        virtual_size: image.size(),
        disk_usage,
        base,
    })
}

/// The problems found in `file`'s metadata (none: clean). A raw image has no metadata; a qcow2
/// image is checked as opening it checks it (every header of its chain, the refcount table).
fn check_image(file: &Path) -> Result<Vec<String>, DiskCliError> {
    match vmm_disk::detect(file)? {
        vmm_disk::Format::Raw => Ok(Vec::new()),
        vmm_disk::Format::Qcow2 => {
            let options = OpenOptions {
                read_only: true,
                format: Some(vmm_disk::Format::Qcow2),
            };
            match vmm_disk::open_image(file, &options) {
                Ok(_) => Ok(Vec::new()),
                Err(e) => Ok(vec![vmm_core::error_chain(&e)]),
            }
        }
        vmm_disk::Format::Layered => Ok(layered::check(file)
            .map_err(DiskError::from)?
            .iter()
            .map(ToString::to_string)
            .collect()),
    }
}

/// Copies `input` into a new `format` image at `output`.
fn convert_image(input: &Path, output: &Path, format: DiskFormat) -> Result<(), DiskCliError> {
    let options = vmm_disk::convert::ConvertOptions::default();
    vmm_disk::convert::convert(input, output, vmm_core::disk_format(format), &options)?;
    Ok(())
}

/// Imports `inputs` as layered images `out/<input name>.layered` sharing one store of blocks.
fn import_dedup(
    inputs: &[PathBuf],
    out: &Path,
    hash: BlockHash,
) -> Result<layered::DedupReport, DiskCliError> {
    let BlockHash::Sha256 = hash;
    std::fs::create_dir_all(out).map_err(|source| DiskCliError::Input {
        path: out.to_path_buf(),
        source,
    })?;
    let mut outputs = Vec::new();
    for input in inputs {
        let name = input.file_name().unwrap_or_default().to_string_lossy();
        let output = out.join(format!("{name}.layered"));
        absent(&output)?;
        if outputs.contains(&output) {
            return Err(DiskCliError::Usage(format!(
                "two inputs named {name}: their imports would both be {}",
                output.display()
            )));
        }
        outputs.push(output);
    }
    Ok(vmm_disk::import_dedup(
        inputs,
        &outputs,
        layered::HashKind::Sha256,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_hashes() {
        assert_eq!(parse_disk_size("10G").unwrap(), 10 << 30);
        assert_eq!(parse_disk_size("64").unwrap(), 64 << 20);
        for bad in ["0", "0G", "ten", "-1G", ""] {
            let err = parse_disk_size(bad).unwrap_err().to_string();
            assert!(err.contains("invalid disk size"), "{bad}: {err}");
        }
        assert_eq!(parse_hash("sha256").unwrap(), BlockHash::Sha256);
        assert!(parse_hash("md5")
            .unwrap_err()
            .to_string()
            .contains("(sha256)"));
    }

    #[test]
    fn info_text_names_the_base() {
        let info = ImageInfo {
            file: "a.layered".into(),
            format: "layered".into(),
            virtual_size: 1 << 30,
            disk_usage: 4096,
            base: Some("rootfs.raw".into()),
        };
        let text = info_text(&info);
        assert!(
            text.contains("virtual size: 1G (1073741824 bytes)"),
            "{text}"
        );
        assert!(text.contains("base: rootfs.raw\n"), "{text}");
    }
}
