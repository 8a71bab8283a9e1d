//! The parts of the `vmm` command line that need neither KVM nor a process of their own: the
//! `firecracker` front end's flags and the jailer's flags with their validation. The binary
//! acts on them; the library lets tests and fuzz targets reach the parsing.

pub mod firecracker_args;
pub mod jail_args;

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
}
