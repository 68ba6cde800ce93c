//! A pseudo-terminal that looks to host software like the module's AT port
//! (`/dev/ttyUSB2`), behind a stable symlink.
//!
//! The modem holds the master side; the host opens the slave (`/dev/pts/N`)
//! through the link. Closing the master is how a reboot looks from the
//! host: its reads fail (EIO) as when USB re-enumerates, and a new PTY then
//! appears behind the same link. Whether a host has the port open is seen
//! on the master: reads fail with EIO while no slave descriptor is open.
//! All of this goes through `nix`'s safe wrappers; no `unsafe` is needed.

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::pty::{PtyMaster, grantpt, posix_openpt, ptsname_r, unlockpt};
use nix::sys::termios::{self, SetArg};
use tokio::io::unix::AsyncFd;

/// How often the master is polled while no host has the port open.
const NO_HOST_POLL: Duration = Duration::from_millis(50);

/// What a read from the port found.
#[derive(Debug, PartialEq, Eq)]
pub enum PortRead {
    /// This many bytes from the host.
    Data(usize),
    /// No host has the port open (all slave descriptors closed).
    NoHost,
}

/// The master side of one pseudo-terminal.
#[derive(Debug)]
pub struct Pty {
    master: AsyncFd<PtyMaster>,
    slave: PathBuf,
}

impl Pty {
    /// Opens a new PTY in raw mode (no echo, no line editing, no CR/LF
    /// translation — the modem frames lines itself).
    ///
    /// # Errors
    /// The system has no free PTY, or the slave cannot be configured.
    pub fn open() -> io::Result<Pty> {
        let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY)?;
        grantpt(&master)?;
        unlockpt(&master)?;
        let slave = PathBuf::from(ptsname_r(&master)?);
        // Configure the line discipline once through a short-lived slave
        // descriptor; the settings stay with the PTY.
        {
            let fd = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc_o_noctty())
                .open(&slave)?;
            let mut t = termios::tcgetattr(fd.as_fd())?;
            termios::cfmakeraw(&mut t);
            termios::tcsetattr(fd.as_fd(), SetArg::TCSANOW, &t)?;
        }
        let flags = OFlag::from_bits_truncate(fcntl(&master, FcntlArg::F_GETFL)?);
        fcntl(&master, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
        Ok(Pty {
            master: register(master)?,
            slave,
        })
    }

    /// The slave device the host opens (`/dev/pts/N`).
    pub fn slave_path(&self) -> &Path {
        &self.slave
    }

    /// Reads what the host wrote, or reports that no host has the port
    /// open (after a short pause, so callers can loop on it).
    ///
    /// # Errors
    /// An I/O error other than EIO.
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<PortRead> {
        loop {
            let mut guard = match tokio::time::timeout(NO_HOST_POLL, self.master.readable()).await {
                Ok(g) => g?,
                Err(_) => continue,
            };
            match guard.try_io(|inner| inner.get_ref().read(buf)) {
                Ok(Ok(0)) => return Ok(PortRead::NoHost),
                Ok(Ok(n)) => return Ok(PortRead::Data(n)),
                Ok(Err(e)) if e.raw_os_error() == Some(Errno::EIO as i32) => {
                    // Hang-up is level-triggered: pause instead of spinning.
                    guard.clear_ready();
                    tokio::time::sleep(NO_HOST_POLL).await;
                    return Ok(PortRead::NoHost);
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes all of `data` to the host.
    ///
    /// # Errors
    /// EIO when no host has the port open; other I/O errors.
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.master.writable().await?;
            match guard.try_io(|inner| inner.get_ref().write(data)) {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }
}

/// Registers the master with tokio's reactor.
///
/// The crate's only `unsafe`: `AsyncFd::register` requires that the file
/// descriptor stays open for as long as it is registered. `PtyMaster` owns
/// the descriptor and the returned `AsyncFd` owns the `PtyMaster`, so the
/// descriptor is closed only when the `AsyncFd` is dropped, which
/// deregisters it first.
#[allow(unsafe_code)]
fn register(master: PtyMaster) -> io::Result<AsyncFd<PtyMaster>> {
    // SAFETY: see above — the fd is owned by the value being registered.
    unsafe { AsyncFd::register(master) }.map_err(|e| e.into_parts().1)
}

fn libc_o_noctty() -> i32 {
    OFlag::O_NOCTTY.bits()
}

/// A symlink kept pointing at the current PTY; removed on drop.
#[derive(Debug)]
pub struct PtyLink {
    link: PathBuf,
}

impl PtyLink {
    /// Creates (or takes over) `link`.
    pub fn new(link: impl Into<PathBuf>) -> Self {
        PtyLink { link: link.into() }
    }

    /// The link's path.
    pub fn path(&self) -> &Path {
        &self.link
    }

    /// Points the link at `target`, atomically (a temporary link renamed
    /// over the old one), so a host never sees it missing.
    ///
    /// # Errors
    /// The link's folder is not writable, or `link` is a real file.
    pub fn point_to(&self, target: &Path) -> io::Result<()> {
        if let Ok(meta) = std::fs::symlink_metadata(&self.link)
            && !meta.file_type().is_symlink()
        {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a symlink", self.link.display()),
            ));
        }
        let mut tmp = self.link.clone().into_os_string();
        tmp.push(format!(".{}.tmp", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(target, &tmp)?;
        std::fs::rename(&tmp, &self.link)
    }
}

impl Drop for PtyLink {
    fn drop(&mut self) {
        if std::fs::symlink_metadata(&self.link).is_ok_and(|m| m.file_type().is_symlink()) {
            let _ = std::fs::remove_file(&self.link);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn host_side_sees_raw_bytes_and_eio_after_close() {
        let pty = Pty::open().unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(pty.read(&mut buf).await.unwrap(), PortRead::NoHost);
        let mut host = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(pty.slave_path())
            .unwrap();
        host.write_all(b"AT\r").unwrap();
        let n = match pty.read(&mut buf).await.unwrap() {
            PortRead::Data(n) => n,
            other => panic!("{other:?}"),
        };
        assert_eq!(&buf[..n], b"AT\r", "raw: no CR translation");
        pty.write_all(b"\r\nOK\r\n").await.unwrap();
        let mut got = [0u8; 6];
        host.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"\r\nOK\r\n", "raw: no echo, no NL translation");
        drop(host);
        assert_eq!(pty.read(&mut buf).await.unwrap(), PortRead::NoHost);
        // The host reopens, then the modem "reboots": reads fail.
        let mut host = std::fs::File::open(pty.slave_path()).unwrap();
        drop(pty);
        let err = host.read(&mut buf);
        assert!(matches!(err, Ok(0)) || err.is_err(), "{err:?}");
    }

    #[test]
    fn link_follows_the_current_pty_and_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let link_path = dir.path().join("modem");
        {
            let link = PtyLink::new(&link_path);
            link.point_to(Path::new("/dev/null")).unwrap();
            assert_eq!(
                std::fs::read_link(&link_path).unwrap(),
                Path::new("/dev/null")
            );
            link.point_to(Path::new("/dev/zero")).unwrap();
            assert_eq!(
                std::fs::read_link(&link_path).unwrap(),
                Path::new("/dev/zero")
            );
        }
        assert!(std::fs::symlink_metadata(&link_path).is_err());
        std::fs::write(&link_path, b"x").unwrap();
        assert!(
            PtyLink::new(&link_path)
                .point_to(Path::new("/dev/null"))
                .is_err()
        );
    }
}
