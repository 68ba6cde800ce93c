//! File twins of resident package copies, so the bytes of a download go to
//! its socket with `sendfile(2)` instead of being copied from user space
//! (the copy was a third to a half of the server's CPU at full speed).
//!
//! hyper and libunftp write a body from memory. A resident copy of at
//! least [`TWIN_MIN`] bytes therefore gets a twin: an unnamed file
//! (`O_TMPFILE`, `open(2)`) in the temporary folder (`TMPDIR`, else
//! `/tmp`) holding the same bytes. It is written once, reopened read-only
//! through `/proc/self/fd`, and its writable handle closed: no name leads
//! to it and no handle can change it, so pages the kernel still holds in a
//! socket queue after `sendfile` returns keep the version that was
//! validated — unlike the package's own file, which an in-place rewrite
//! could reach. The writer of a connection ([`crate::serve::zerocopy`])
//! recognises a slice of a resident copy by its address and sends the
//! twin's pages instead.
//!
//! On a disk file system the twin lives in the page cache, in large folios
//! that `sendfile` hands over a few at a time (a shared-memory twin, as a
//! `memfd` or on `tmpfs`, splices 4 KiB pages and cost as much CPU as the
//! copy it saved); the kernel writes it back and may evict and re-read it
//! like any cached file. It takes disk space equal to the copy until the
//! copy is dropped. A temporary folder on `tmpfs` keeps the twin in memory:
//! the resident budget then counts it ([`footprint`]). With no twin (no
//! `O_TMPFILE`, a full disk) the copy is written from user space as before,
//! after one warning.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};
use std::sync::{Arc, OnceLock, RwLock};

use bytes::Bytes;

/// Smallest resident copy given a twin (64 KiB): below it a download is a
/// write or two, and a copy costs less than a look-up.
pub const TWIN_MIN: usize = 64 * 1024;

/// Resident copies with a twin, by the address of their first byte.
static REGIONS: RwLock<BTreeMap<usize, Region>> = RwLock::new(BTreeMap::new());

#[derive(Debug)]
struct Region {
    len: usize,
    twin: Arc<File>,
}

/// The owner of a resident copy with a twin: its registration ends before
/// its memory is freed, so an address in [`REGIONS`] always belongs to the
/// copy it names.
struct Owner {
    data: Box<[u8]>,
}

impl AsRef<[u8]> for Owner {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        regions_mut().remove(&(self.data.as_ptr() as usize));
    }
}

fn regions_mut() -> std::sync::RwLockWriteGuard<'static, BTreeMap<usize, Region>> {
    REGIONS.write().unwrap_or_else(|p| p.into_inner())
}

/// `copy` as a resident copy: with a twin when it is at least [`TWIN_MIN`]
/// bytes and the temporary folder takes one; otherwise a plain copy,
/// written from user space, and one warning.
pub fn resident(copy: Vec<u8>) -> Bytes {
    if copy.len() < TWIN_MIN {
        return Bytes::from(copy);
    }
    let twin = match twin_of(&copy) {
        Ok(twin) => Arc::new(twin),
        Err(err) => {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                tracing::warn!(
                    error = %err,
                    dir = %std::env::temp_dir().display(),
                    "no file twin for a resident package in the temporary folder: package bytes are copied to each socket"
                );
            });
            return Bytes::from(copy);
        }
    };
    let data = copy.into_boxed_slice();
    let region = Region {
        len: data.len(),
        twin,
    };
    regions_mut().insert(data.as_ptr() as usize, region);
    Bytes::from_owner(Owner { data })
}

/// An unnamed, read-only file in the temporary folder holding `bytes`.
///
/// # Errors
/// The folder does not take `O_TMPFILE` files, or is full.
fn twin_of(bytes: &[u8]) -> io::Result<File> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(
        std::env::temp_dir(),
        OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    let mut writable = File::from(fd);
    writable.write_all(bytes)?;
    let path = format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&writable)
    );
    let read_only = File::open(path)?;
    drop(writable);
    Ok(read_only)
}

/// Whether twins in the temporary folder take memory rather than disk
/// (`tmpfs`, `ramfs`); asked once.
fn twins_in_memory() -> bool {
    static IN_MEMORY: OnceLock<bool> = OnceLock::new();
    *IN_MEMORY.get_or_init(|| {
        const TMPFS_MAGIC: i64 = 0x0102_1994;
        const RAMFS_MAGIC: i64 = 0x8584_58f6;
        // `f_type`'s integer type differs between architectures.
        #[allow(clippy::unnecessary_cast)]
        let magic = |s: rustix::fs::StatFs| s.f_type as i64;
        rustix::fs::statfs(std::env::temp_dir())
            .is_ok_and(|s| matches!(magic(s), TMPFS_MAGIC | RAMFS_MAGIC))
    })
}

/// The twin holding `slice` and the slice's offset in it, when `slice`
/// lies inside a resident copy that has one. Only addresses are compared;
/// nothing is read.
pub fn find(slice: &[u8]) -> Option<(Arc<File>, u64)> {
    if slice.is_empty() {
        return None;
    }
    let at = slice.as_ptr() as usize;
    let regions = REGIONS.read().unwrap_or_else(|p| p.into_inner());
    let (start, region) = regions.range(..=at).next_back()?;
    (at + slice.len() <= start + region.len)
        .then(|| (Arc::clone(&region.twin), (at - start) as u64))
}

/// Memory a resident copy takes: its length, twice when it has a twin in a
/// memory-backed temporary folder. Bytes.
pub fn footprint(copy: &Bytes) -> u64 {
    let len = copy.len() as u64;
    if twins_in_memory() && find(copy).is_some() {
        2 * len
    } else {
        len
    }
}

/// Memory a resident copy of `len` bytes will take at most ([`footprint`]
/// once it exists). Bytes.
pub fn cost(len: u64) -> u64 {
    if twins_in_memory() && len >= TWIN_MIN as u64 {
        2 * len
    } else {
        len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn a_slice_of_a_large_copy_is_found_in_its_twin() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let copy = resident(data.clone());
        let part = copy.slice(70_000..70_100);
        let (twin, offset) = find(&part).expect("a twin");
        assert_eq!(offset, 70_000);
        let mut back = [0u8; 100];
        twin.read_exact_at(&mut back, offset).unwrap();
        assert_eq!(&back[..], &data[70_000..70_100]);
        let want = if twins_in_memory() { 400_000 } else { 200_000 };
        assert_eq!(footprint(&copy), want);
        // The twin cannot be written through the handle the server keeps.
        assert!(twin.write_at(b"x", 0).is_err());
    }

    #[test]
    fn small_copies_and_other_memory_have_no_twin() {
        let small = resident(vec![1u8; 1000]);
        assert!(find(&small).is_none());
        assert_eq!(footprint(&small), 1000);
        let other = vec![0u8; 100_000];
        assert!(find(&other).is_none());
    }

    #[test]
    fn a_dropped_copy_leaves_no_region() {
        let copy = resident(vec![7u8; 100_000]);
        let at = copy.as_ptr() as usize;
        drop(copy);
        assert!(!REGIONS.read().unwrap().contains_key(&at));
    }
}
