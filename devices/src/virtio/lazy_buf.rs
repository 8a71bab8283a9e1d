//! Scratch buffers allocated when a device first needs them.

/// A zeroed buffer of a fixed length, allocated on first use. A device holds one for the bytes
/// it copies between guest memory and its backend (a frame, a vsock payload, entropy); up to
/// 64 KiB each, they would otherwise take heap (and, once calloc clears a reused block, resident
/// memory) from the VM's start, even for a device the guest never drives.
pub(crate) struct LazyBuf {
    len: usize,
    buf: Vec<u8>,
}

impl LazyBuf {
    /// A buffer of `len` bytes, not allocated yet.
    pub(crate) const fn new(len: usize) -> LazyBuf {
        LazyBuf {
            len,
            buf: Vec::new(),
        }
    }

    /// Its length (whether allocated or not).
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The buffer, allocated (zeroed) on the first call; its contents persist between calls.
    pub(crate) fn get(&mut self) -> &mut [u8] {
        if self.buf.len() != self.len {
            self.buf = vec![0; self.len];
        }
        &mut self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::LazyBuf;

    #[test]
    fn allocated_on_first_use_and_kept() {
        let mut b = LazyBuf::new(16);
        assert_eq!(b.len(), 16);
        assert_eq!(b.buf.capacity(), 0);
        b.get()[3] = 7;
        assert_eq!(b.get().len(), 16);
        assert_eq!(b.get()[3], 7);
    }
}
