//! Memory for key material: its own anonymous mapping, locked into RAM (`mlock`), left out of
//! core dumps (`MADV_DONTDUMP`) and zeroed before it is unmapped.

use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

fn page_size() -> usize {
    // SAFETY: sysconf has no memory effects; a failure (-1) falls back to 4 KiB.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(page)
        .ok()
        .filter(|p| *p > 0)
        .unwrap_or(4096)
}

/// A locked, non-dumpable, zeroed-on-drop mapping of at least `len` bytes.
struct Region {
    ptr: NonNull<u8>,
    map_len: usize,
}

// SAFETY: the region is owned memory with no thread affinity.
unsafe impl Send for Region {}
// SAFETY: shared access only reads through `&self`.
unsafe impl Sync for Region {}

impl Region {
    fn new(len: usize) -> Option<Region> {
        let page = page_size();
        let map_len = len.max(1).checked_add(page - 1)? / page * page;
        // SAFETY: a fresh private anonymous mapping; no existing memory is touched.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return None;
        }
        // SAFETY: `ptr..ptr + map_len` is the mapping just made; madvise and mlock only change
        // how the kernel treats it. Failures leave working (if less protected) memory: mlock
        // fails under a small RLIMIT_MEMLOCK, which is logged once.
        unsafe {
            libc::madvise(ptr, map_len, libc::MADV_DONTDUMP);
            if libc::mlock(ptr, map_len) != 0 {
                static WARNED: std::sync::Once = std::sync::Once::new();
                WARNED.call_once(|| {
                    log::warn!(
                        "cannot mlock key material ({}); raise RLIMIT_MEMLOCK to keep it out of swap",
                        std::io::Error::last_os_error()
                    )
                });
            }
        }
        Some(Region {
            ptr: NonNull::new(ptr.cast())?,
            map_len,
        })
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: the mapping is ours and `map_len` bytes long; nothing refers to it any more.
        unsafe {
            let bytes = std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.map_len);
            zeroize::Zeroize::zeroize(bytes);
            // munmap drops the lock too (no munlock: one syscall fewer for seccomp filters).
            libc::munmap(self.ptr.as_ptr().cast(), self.map_len);
        }
    }
}

/// Could not map memory for key material.
#[derive(Debug, thiserror::Error)]
#[error("cannot map {0} bytes of locked memory for key material")]
pub struct SecretAllocError(pub usize);

/// Bytes of key material (keys, passphrases, decrypted keyslot material) in locked,
/// non-dumpable memory that is zeroed on drop.
pub struct SecretBuf {
    region: Region,
    len: usize,
}

impl SecretBuf {
    /// `len` zero bytes.
    pub fn zeroed(len: usize) -> Result<SecretBuf, SecretAllocError> {
        Ok(SecretBuf {
            region: Region::new(len).ok_or(SecretAllocError(len))?,
            len,
        })
    }

    /// A copy of `bytes`.
    pub fn from_slice(bytes: &[u8]) -> Result<SecretBuf, SecretAllocError> {
        let mut buf = SecretBuf::zeroed(bytes.len())?;
        buf.copy_from_slice(bytes);
        Ok(buf)
    }

    /// Shortens the buffer to `len` bytes (the rest stays mapped and is zeroed on drop).
    pub fn truncate(&mut self, len: usize) {
        if len < self.len {
            let tail = self.len;
            zeroize::Zeroize::zeroize(&mut self.as_mut_slice_full()[len..tail]);
            self.len = len;
        }
    }

    fn as_mut_slice_full(&mut self) -> &mut [u8] {
        // SAFETY: the region holds at least `len` initialized (zero-filled) bytes and `&mut
        // self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.region.ptr.as_ptr(), self.len) }
    }
}

impl Deref for SecretBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: the region holds at least `len` initialized bytes, alive as long as `self`.
        unsafe { std::slice::from_raw_parts(self.region.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for SecretBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.as_mut_slice_full()
    }
}

impl std::fmt::Debug for SecretBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretBuf({} bytes)", self.len)
    }
}

/// A value holding key material (a cipher's key schedule) kept in a locked, non-dumpable
/// mapping; dropped in place, then its bytes are zeroed.
pub struct Secret<T> {
    region: Region,
    _marker: std::marker::PhantomData<T>,
}

// SAFETY: `Secret<T>` owns its `T` as a `Box` would.
unsafe impl<T: Send> Send for Secret<T> {}
// SAFETY: as for `Box<T>`.
unsafe impl<T: Sync> Sync for Secret<T> {}

impl<T> Secret<T> {
    /// Moves `value` into locked memory. (The moved-from copy is the caller's stack frame; build
    /// `T` from a [`SecretBuf`] right before so that only the key schedule is copied.)
    pub fn new(value: T) -> Result<Secret<T>, SecretAllocError> {
        let size = std::mem::size_of::<T>();
        if std::mem::align_of::<T>() > page_size() {
            return Err(SecretAllocError(size));
        }
        let region = Region::new(size).ok_or(SecretAllocError(size))?;
        // SAFETY: the mapping is page-aligned (so aligned for T), at least size_of::<T>() bytes,
        // and holds no value yet.
        unsafe { region.ptr.as_ptr().cast::<T>().write(value) };
        Ok(Secret {
            region,
            _marker: std::marker::PhantomData,
        })
    }
}

impl<T> Deref for Secret<T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: `new` wrote a valid T there, dropped only in `drop`.
        unsafe { &*self.region.ptr.as_ptr().cast::<T>() }
    }
}

impl<T> DerefMut for Secret<T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and `&mut self` makes the reference unique.
        unsafe { &mut *self.region.ptr.as_ptr().cast::<T>() }
    }
}

impl<T> Drop for Secret<T> {
    fn drop(&mut self) {
        // SAFETY: the T written by `new` is dropped exactly once, here; the region then zeroes
        // and unmaps the bytes.
        unsafe { std::ptr::drop_in_place(self.region.ptr.as_ptr().cast::<T>()) };
    }
}

impl<T> std::fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_buf_round_trip() {
        let mut buf = SecretBuf::from_slice(b"hunter2").unwrap();
        assert_eq!(&*buf, b"hunter2");
        buf.truncate(3);
        assert_eq!(&*buf, b"hun");
        assert_eq!(SecretBuf::zeroed(0).unwrap().len(), 0);
        let big = SecretBuf::zeroed(10_000).unwrap();
        assert!(big.iter().all(|b| *b == 0));
    }

    #[test]
    fn secret_value_drops_once() {
        let counter = std::sync::Arc::new(());
        let secret = Secret::new(counter.clone()).unwrap();
        assert_eq!(std::sync::Arc::strong_count(&counter), 2);
        drop(secret);
        assert_eq!(std::sync::Arc::strong_count(&counter), 1);
    }
}
