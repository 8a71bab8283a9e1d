//! The kernel command line: a base text (the VMM's default or the user's) plus appended pieces.

use linux_loader::cmdline::{Cmdline, Error as CmdlineError};

use crate::error::{Error, Result};

/// Builds the command line from `base` (the VMM's default or the user's) followed by every `append`
/// piece, space separated, with `capacity` bytes (NUL included): the size of the guest's command
/// line area, [`BootLayout::cmdline_max_size`](crate::BootLayout::cmdline_max_size).
///
/// Arguments after a ` -- ` (outside double quotes) go to init; they are kept apart in the
/// [`Cmdline`] so that what the VMM adds later (`virtio_mmio.device=...`) still lands before the
/// `--`, where the kernel reads it.
pub fn build_cmdline(base: &str, append: &[&str], capacity: usize) -> Result<Cmdline> {
    // Longest command line without its NUL.
    let max_len = capacity.saturating_sub(1);
    let mut text = String::from(base);
    for piece in append.iter().filter(|p| !p.is_empty()) {
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(piece);
    }
    // Our own scan first, to say which character at which offset; Cmdline would only say
    // "invalid ASCII", and it silently trims tabs and newlines at the ends of a piece.
    if let Some((offset, ch)) = text.char_indices().find(|&(_, c)| !valid_char(c)) {
        return Err(Error::CmdlineInvalidChar { ch, offset });
    }
    let (boot, init) = split_init_args(&text);
    let len = if init.is_empty() {
        boot.len()
    } else {
        boot.len() + " -- ".len() + init.len()
    };
    if len > max_len {
        return Err(Error::CmdlineTooLong { len, max: max_len });
    }

    let mut cmdline = Cmdline::new(capacity).map_err(Error::Cmdline)?;
    if !boot.is_empty() {
        cmdline
            .insert_str(boot)
            .map_err(|e| map_error(e, len, max_len))?;
    }
    if !init.is_empty() {
        cmdline
            .insert_init_args(init)
            .map_err(|e| map_error(e, len, max_len))?;
    }
    Ok(cmdline)
}

/// The characters linux-loader's `Cmdline` accepts: printable ASCII.
fn valid_char(c: char) -> bool {
    matches!(c, ' '..='~')
}

fn map_error(e: CmdlineError, len: usize, max: usize) -> Error {
    match e {
        CmdlineError::TooLarge => Error::CmdlineTooLong { len, max },
        other => Error::Cmdline(other),
    }
}

/// Splits at the first `--` that stands alone outside double quotes (as the kernel's parser
/// does). With nothing before it, everything stays kernel arguments: linux-loader's `Cmdline`
/// cannot hold init arguments alone.
fn split_init_args(text: &str) -> (&str, &str) {
    let bytes = text.as_bytes();
    let mut in_quotes = false;
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'"' {
            in_quotes = !in_quotes;
            continue;
        }
        let starts_token = i == 0 || bytes[i - 1] == b' ';
        let ends_token = matches!(bytes.get(i + 2), None | Some(b' '));
        if !in_quotes && starts_token && ends_token && bytes[i..].starts_with(b"--") {
            let boot = text[..i].trim();
            if boot.is_empty() {
                break;
            }
            return (boot, text[i + 2..].trim());
        }
    }
    (text.trim(), "")
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_memory::layout::CMDLINE_MAX_SIZE;

    /// Longest command line without its NUL, in the VMM's layout.
    const MAX_LEN: usize = CMDLINE_MAX_SIZE - 1;

    fn build_cmdline(base: &str, append: &[&str]) -> Result<Cmdline> {
        super::build_cmdline(base, append, CMDLINE_MAX_SIZE)
    }

    /// A typical microVM command line.
    const TEST_CMDLINE: &str = "console=ttyS0 reboot=k panic=1 pci=off 8250.nr_uarts=1";

    fn text(c: &Cmdline) -> String {
        c.as_cstring().unwrap().into_string().unwrap()
    }

    #[test]
    fn default_replace_and_append() {
        assert_eq!(
            text(&build_cmdline(TEST_CMDLINE, &[]).unwrap()),
            TEST_CMDLINE
        );
        assert_eq!(
            text(&build_cmdline("console=hvc0", &[]).unwrap()),
            "console=hvc0"
        );
        assert_eq!(
            text(&build_cmdline(TEST_CMDLINE, &["quiet", "guest.test=smp,blk"]).unwrap()),
            format!("{TEST_CMDLINE} quiet guest.test=smp,blk")
        );
        assert_eq!(
            text(&build_cmdline("a", &["b=\"x y\"", "c"]).unwrap()),
            "a b=\"x y\" c"
        );
        assert_eq!(text(&build_cmdline("", &[]).unwrap()), "");
        assert_eq!(text(&build_cmdline("", &["", "x"]).unwrap()), "x");
    }

    #[test]
    fn init_args_stay_after_later_additions() {
        let mut c = build_cmdline("root=/dev/vda -- single", &["quiet"]).unwrap();
        assert_eq!(text(&c), "root=/dev/vda -- single quiet");
        c.insert_str("virtio_mmio.device=4K@0xd0000000:5").unwrap();
        assert_eq!(
            text(&c),
            "root=/dev/vda virtio_mmio.device=4K@0xd0000000:5 -- single quiet"
        );
        // Quoted or glued dashes are not the separator; a lone leading one keeps everything.
        assert_eq!(split_init_args("a=\"x -- y\" b"), ("a=\"x -- y\" b", ""));
        assert_eq!(split_init_args("a --b c--"), ("a --b c--", ""));
        assert_eq!(split_init_args("-- x"), ("-- x", ""));
        assert_eq!(split_init_args("a --"), ("a", ""));
    }

    #[test]
    fn too_long_names_length_and_limit() {
        let long = "x".repeat(MAX_LEN);
        assert!(build_cmdline(&long, &[]).is_ok());
        let err = build_cmdline(&long, &["y"]).unwrap_err();
        assert!(
            matches!(
                err,
                Error::CmdlineTooLong {
                    len: 2049,
                    max: 2047
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("2049") && err.to_string().contains("2047"));
        let long = "x".repeat(MAX_LEN + 1);
        assert!(matches!(
            build_cmdline(&long, &[]),
            Err(Error::CmdlineTooLong { .. })
        ));
    }

    #[test]
    fn the_capacity_is_the_callers() {
        let c = super::build_cmdline("abc", &["de"], 7).unwrap();
        assert_eq!(text(&c), "abc de");
        assert!(matches!(
            super::build_cmdline("abc", &["def"], 7),
            Err(Error::CmdlineTooLong { len: 7, max: 6 })
        ));
        // A later addition must fit the same capacity.
        let mut c = super::build_cmdline("a -- b", &[], 8).unwrap();
        assert!(c.insert_str("c").is_err());
        // No room at all: an error, not a panic.
        assert!(matches!(
            super::build_cmdline("", &[], 0),
            Err(Error::Cmdline(CmdlineError::InvalidCapacity))
        ));
        assert!(matches!(
            super::build_cmdline("x", &[], 0),
            Err(Error::CmdlineTooLong { len: 1, max: 0 })
        ));
    }

    #[test]
    fn invalid_characters_are_rejected() {
        let err = build_cmdline(TEST_CMDLINE, &["a\0b"]).unwrap_err();
        let offset = TEST_CMDLINE.len() + 2;
        assert!(
            matches!(err, Error::CmdlineInvalidChar { ch: '\0', offset: o } if o == offset),
            "{err}"
        );
        for bad in ["tab\there", "nl\n", "caf\u{e9}", "\x7f"] {
            assert!(
                matches!(
                    build_cmdline(bad, &[]),
                    Err(Error::CmdlineInvalidChar { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn cmdline_errors_are_mapped() {
        assert!(matches!(
            map_error(CmdlineError::TooLarge, 5000, 2047),
            Error::CmdlineTooLong {
                len: 5000,
                max: 2047
            }
        ));
        assert!(matches!(
            map_error(CmdlineError::InvalidAscii, 1, 2047),
            Error::Cmdline(CmdlineError::InvalidAscii)
        ));
    }
}
