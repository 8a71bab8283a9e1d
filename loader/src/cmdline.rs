//! The kernel command line: the default (or the user's replacement) plus appended pieces.

use linux_loader::cmdline::{Cmdline, Error as CmdlineError};
use vmm_memory::layout;

use crate::error::{Error, Result};

/// The command line used when the user gives none: serial console, reboot through the i8042,
/// reboot on panic, no PCI probing, one UART, an i8042 without aux port or mux.
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=1 pci=off nomodule 8250.nr_uarts=1 i8042.noaux i8042.nomux i8042.dumbkbd";

/// Longest command line without its NUL.
const MAX_LEN: usize = layout::CMDLINE_MAX_SIZE - 1;

/// Builds the command line from `replace` (or [`DEFAULT_CMDLINE`]) followed by every `append`
/// piece, space separated, with capacity [`layout::CMDLINE_MAX_SIZE`] (NUL included).
///
/// Arguments after a ` -- ` (outside double quotes) go to init; they are kept apart in the
/// [`Cmdline`] so that what the VMM adds later (`virtio_mmio.device=...`) still lands before the
/// `--`, where the kernel reads it.
pub fn build_cmdline(replace: Option<&str>, append: &[&str]) -> Result<Cmdline> {
    let mut text = String::from(replace.unwrap_or(DEFAULT_CMDLINE));
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
    if len > MAX_LEN {
        return Err(Error::CmdlineTooLong { len, max: MAX_LEN });
    }

    let mut cmdline = Cmdline::new(layout::CMDLINE_MAX_SIZE).map_err(Error::Cmdline)?;
    if !boot.is_empty() {
        cmdline.insert_str(boot).map_err(|e| map_error(e, len))?;
    }
    if !init.is_empty() {
        cmdline
            .insert_init_args(init)
            .map_err(|e| map_error(e, len))?;
    }
    Ok(cmdline)
}

/// The characters linux-loader's `Cmdline` accepts: printable ASCII.
fn valid_char(c: char) -> bool {
    matches!(c, ' '..='~')
}

fn map_error(e: CmdlineError, len: usize) -> Error {
    match e {
        CmdlineError::TooLarge => Error::CmdlineTooLong { len, max: MAX_LEN },
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

    fn text(c: &Cmdline) -> String {
        c.as_cstring().unwrap().into_string().unwrap()
    }

    #[test]
    fn default_replace_and_append() {
        assert_eq!(text(&build_cmdline(None, &[]).unwrap()), DEFAULT_CMDLINE);
        assert_eq!(
            text(&build_cmdline(Some("console=hvc0"), &[]).unwrap()),
            "console=hvc0"
        );
        assert_eq!(
            text(&build_cmdline(None, &["quiet", "guest.test=smp,blk"]).unwrap()),
            format!("{DEFAULT_CMDLINE} quiet guest.test=smp,blk")
        );
        assert_eq!(
            text(&build_cmdline(Some("a"), &["b=\"x y\"", "c"]).unwrap()),
            "a b=\"x y\" c"
        );
        assert_eq!(text(&build_cmdline(Some(""), &[]).unwrap()), "");
        assert_eq!(text(&build_cmdline(Some(""), &["", "x"]).unwrap()), "x");
    }

    #[test]
    fn init_args_stay_after_later_additions() {
        let mut c = build_cmdline(Some("root=/dev/vda -- single"), &["quiet"]).unwrap();
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
        assert!(build_cmdline(Some(&long), &[]).is_ok());
        let err = build_cmdline(Some(&long), &["y"]).unwrap_err();
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
            build_cmdline(Some(&long), &[]),
            Err(Error::CmdlineTooLong { .. })
        ));
    }

    #[test]
    fn invalid_characters_are_rejected() {
        let err = build_cmdline(None, &["a\0b"]).unwrap_err();
        let offset = DEFAULT_CMDLINE.len() + 2;
        assert!(
            matches!(err, Error::CmdlineInvalidChar { ch: '\0', offset: o } if o == offset),
            "{err}"
        );
        for bad in ["tab\there", "nl\n", "caf\u{e9}", "\x7f"] {
            assert!(
                matches!(
                    build_cmdline(Some(bad), &[]),
                    Err(Error::CmdlineInvalidChar { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn cmdline_errors_are_mapped() {
        assert!(matches!(
            map_error(CmdlineError::TooLarge, 5000),
            Error::CmdlineTooLong { len: 5000, .. }
        ));
        assert!(matches!(
            map_error(CmdlineError::InvalidAscii, 1),
            Error::Cmdline(CmdlineError::InvalidAscii)
        ));
    }
}
