//! Sealed in-memory files behind resident package copies, so the bytes of
//! a download can go to its socket with `sendfile(2)` instead of being
//! copied from user space (the copy is a third of the server's CPU when it
//! serves at full speed).
//!
//! hyper and libunftp write a body from memory. A resident copy of at
//! least [`SEALED_MIN`] bytes therefore gets a twin: a `memfd` holding the
//! same bytes, sealed against writes, shrinking and growing
//! (`memfd_create(2)`, `F_ADD_SEALS` in `fcntl(2)`). The writer of a
//! connection ([`crate::serve::zerocopy`]) recognises a slice of a resident
//! copy by its address and sends the twin's pages instead. Nothing can
//! change a sealed file, so pages the kernel still holds in a socket queue
//! after `sendfile` returns keep the version that was validated — unlike
//! the package's own file, which an in-place rewrite could reach.
//!
//! The twin costs as much memory as the copy (shared memory, not heap): the
//! resident budget counts both ([`footprint`]).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use rustix::fs::{MemfdFlags, SealFlags};

/// Smallest resident copy given a sealed twin (64 KiB): below it a
/// download is a write or two, and a copy costs less than a look-up.
pub const SEALED_MIN: usize = 64 * 1024;

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

/// `copy` as a resident copy: with a sealed twin when it is at least
/// [`SEALED_MIN`] bytes and the system gives one (Linux ≥ 3.17; otherwise
/// a plain copy, written from user space, and one warning).
pub fn resident(copy: Vec<u8>) -> Bytes {
    if copy.len() < SEALED_MIN {
        return Bytes::from(copy);
    }
    let twin = match twin_of(&copy) {
        Ok(twin) => Arc::new(twin),
        Err(err) => {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                tracing::warn!(error = %err, "no sealed memfd: package bytes are copied to each socket");
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

/// A sealed `memfd` holding `bytes`.
fn twin_of(bytes: &[u8]) -> io::Result<File> {
    let fd = rustix::fs::memfd_create(
        "qfota-package",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )?;
    let mut file = File::from(fd);
    file.write_all(bytes)?;
    rustix::fs::fcntl_add_seals(
        &file,
        SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE | SealFlags::SEAL,
    )?;
    Ok(file)
}

/// The sealed twin holding `slice` and the slice's offset in it, when
/// `slice` lies inside a resident copy that has one. Only addresses are
/// compared; nothing is read.
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

/// Memory a resident copy takes: its length, twice when it has a sealed
/// twin. Bytes.
pub fn footprint(copy: &Bytes) -> u64 {
    let len = copy.len() as u64;
    if find(copy).is_some() { 2 * len } else { len }
}

/// Memory a resident copy of `len` bytes will take at most ([`footprint`]
/// once it exists). Bytes.
pub fn cost(len: u64) -> u64 {
    if len >= SEALED_MIN as u64 {
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
    fn a_slice_of_a_large_copy_is_found_in_its_sealed_twin() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let copy = resident(data.clone());
        let part = copy.slice(70_000..70_100);
        let (twin, offset) = find(&part).expect("a twin");
        assert_eq!(offset, 70_000);
        let mut back = [0u8; 100];
        twin.read_exact_at(&mut back, offset).unwrap();
        assert_eq!(&back[..], &data[70_000..70_100]);
        assert_eq!(footprint(&copy), 400_000);
        // The twin cannot be written.
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
