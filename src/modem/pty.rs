//! A pseudo-terminal that looks to host software like the module's AT port
//! (`/dev/ttyUSB2`), behind a stable symlink.
//!
//! The modem holds the master side; the host opens the slave (`/dev/pts/N`)
//! through the link. Closing the master is how a reboot looks from the
//! host: its reads fail (EIO or end of file) as when USB re-enumerates, and
//! a new PTY then appears behind the same link. Whether a host has the port
//! open is seen on the master: reads fail with EIO while no slave
//! descriptor is open, and would block while one is.
//!
//! # Why the master is polled, not registered with the reactor
//!
//! A hang-up (no slave open) is a level condition the kernel reports as
//! `EPOLLHUP`, and Tokio keeps a registration's "read closed" state for
//! ever once seen (it is final for sockets). A PTY's hang-up is not final:
//! the next host to open the slave clears it. Registered with Tokio, a
//! master whose slave was once closed is "readable" for ever, and a read
//! loop spins at full CPU while a silent host holds the port. So the master
//! is non-blocking and polled: every [`DATA_POLL`] while a host is
//! attached, every [`NO_HOST_POLL`] while none is. An AT port carries a few
//! hundred bytes a second; the cost is a few dozen system calls a second.
//! Everything goes through `rustix`'s safe wrappers: no `unsafe`.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::fs::{OFlags, fcntl_getfl, fcntl_setfl};
use rustix::io::Errno;
use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
use rustix::termios::{OptionalActions, QueueSelector, tcflush, tcgetattr, tcsetattr};
use tokio::time::Instant;

/// How often the master is polled for input while a host has it open:
/// 10 ms, the worst added latency of a command.
pub const DATA_POLL: Duration = Duration::from_millis(10);
/// How often the master is polled while no host has the port open: 50 ms.
pub const NO_HOST_POLL: Duration = Duration::from_millis(50);
/// A host that holds the port open and writes nothing is reported
/// ([`PortRead::Idle`]) after this long: 100 ms.
pub const IDLE_REPORT: Duration = Duration::from_millis(100);
/// How often a write that found the host's buffer full is retried: 5 ms.
const WRITE_POLL: Duration = Duration::from_millis(5);

/// What a read from the port found.
#[derive(Debug, PartialEq, Eq)]
pub enum PortRead {
    /// This many bytes from the host (a host has the port open).
    Data(usize),
    /// A host has the port open and wrote nothing (for [`IDLE_REPORT`],
    /// from [`Pty::read`]; right now, from [`Pty::try_read`]).
    Idle,
    /// No host has the port open (all slave descriptors closed).
    NoHost,
}

/// The master side of one pseudo-terminal; dropping it closes the port
/// (the host's reads fail).
#[derive(Debug)]
pub struct Pty {
    /// The master (`posix_openpt(3)`), as a file for reads and writes.
    master: File,
    slave: PathBuf,
}

impl Pty {
    /// Opens a new PTY in raw mode (no echo, no line editing, no CR/LF
    /// translation — the modem frames lines itself).
    ///
    /// # Errors
    /// The system has no free PTY, or the slave cannot be configured.
    pub fn open() -> io::Result<Pty> {
        let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY)?;
        grantpt(&master)?;
        unlockpt(&master)?;
        let name = ptsname(&master, Vec::new())?.into_bytes();
        let slave = PathBuf::from(std::ffi::OsString::from_vec(name));
        // Configure the line discipline once through a short-lived slave
        // descriptor; the settings stay with the PTY while the master is
        // open.
        {
            let fd = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(no_ctty(OFlags::empty()))
                .open(&slave)?;
            let mut t = tcgetattr(&fd)?;
            t.make_raw();
            tcsetattr(&fd, OptionalActions::Now, &t)?;
        }
        fcntl_setfl(&master, fcntl_getfl(&master)? | OFlags::NONBLOCK)?;
        let master = File::from(master);
        Ok(Pty { master, slave })
    }

    /// The slave device the host opens (`/dev/pts/N`).
    pub fn slave_path(&self) -> &Path {
        &self.slave
    }

    /// One non-blocking read: [`PortRead::Data`], [`PortRead::Idle`] (a
    /// host has the port open, nothing to read now) or
    /// [`PortRead::NoHost`].
    ///
    /// # Errors
    /// An I/O error other than EIO (which means "no host").
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<PortRead> {
        match (&self.master).read(buf) {
            // A master reads 0 only when no slave is open on some kernels.
            Ok(0) => Ok(PortRead::NoHost),
            Ok(n) => Ok(PortRead::Data(n)),
            Err(e) if e.raw_os_error() == Some(Errno::IO.raw_os_error()) => Ok(PortRead::NoHost),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(PortRead::Idle)
            }
            Err(e) => Err(e),
        }
    }

    /// Reads what the host wrote; or reports, after [`IDLE_REPORT`], that a
    /// host holds the port open but wrote nothing; or, after a pause of
    /// [`NO_HOST_POLL`], that no host has the port open. Callers loop on
    /// it. Cancel-safe: no byte is read and then lost.
    ///
    /// # Errors
    /// An I/O error other than EIO (which means "no host").
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<PortRead> {
        let start = Instant::now();
        loop {
            match self.try_read(buf)? {
                PortRead::NoHost => {
                    tokio::time::sleep(NO_HOST_POLL).await;
                    return Ok(PortRead::NoHost);
                }
                PortRead::Idle if start.elapsed() < IDLE_REPORT => {
                    tokio::time::sleep(DATA_POLL).await;
                }
                got => return Ok(got),
            }
        }
    }

    /// Writes all of `data` to the host, waiting while its buffer is full.
    ///
    /// With no host attached the kernel keeps the bytes for whoever opens
    /// the port next; callers write only while a host is attached and call
    /// [`discard_unread`](Self::discard_unread) when it leaves.
    ///
    /// # Errors
    /// I/O errors of the master (not a full buffer).
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            match (&self.master).write(data) {
                Ok(n) => data = &data[n..],
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) =>
                {
                    tokio::time::sleep(WRITE_POLL).await;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Drops what the modem wrote and no host read, so that the next host
    /// to open the port does not get stale lines (a USB port nobody has
    /// open keeps nothing).
    ///
    /// # Errors
    /// The flush fails (it should not on a PTY master).
    pub fn discard_unread(&self) -> io::Result<()> {
        // Written bytes sit first in the slave's flip buffer (flushed from
        // the master side), then move to its line discipline (flushed from
        // the slave side, through a descriptor opened for just this).
        tcflush(&self.master, QueueSelector::OFlush)?;
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(no_ctty(OFlags::NONBLOCK))
            .open(&self.slave)?;
        tcflush(&slave, QueueSelector::IFlush)?;
        Ok(())
    }
}

/// `flags` with `O_NOCTTY` (opening the slave must not make it this
/// process's controlling terminal), as `open(2)`'s flag bits.
fn no_ctty(flags: OFlags) -> i32 {
    (flags | OFlags::NOCTTY).bits() as i32
}

/// A symlink kept pointing at the current PTY; removed on drop. Two
/// modems never share one: the first to make the link holds an exclusive
/// `flock(2)` on `<link>.lock` for as long as it runs (the kernel drops it
/// when the process ends, even killed), and a modem that cannot take the
/// lock neither makes, replaces nor removes the link. The lock file stays
/// (deleting it would let two modems lock different files).
#[derive(Debug)]
pub struct PtyLink {
    link: PathBuf,
    /// The held lock (`None`: not taken yet).
    lock: std::sync::Mutex<Option<std::fs::File>>,
}

impl PtyLink {
    /// Manages `link` (nothing is created until [`point_to`](Self::point_to)).
    pub fn new(link: impl Into<PathBuf>) -> Self {
        PtyLink {
            link: link.into(),
            lock: std::sync::Mutex::new(None),
        }
    }

    /// `<link>.lock`.
    fn lock_path(&self) -> PathBuf {
        let mut path = self.link.clone().into_os_string();
        path.push(".lock");
        PathBuf::from(path)
    }

    /// Whether this one holds the link's lock.
    fn holds_lock(&self) -> bool {
        self.lock
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Takes the link's lock, unless held already.
    ///
    /// # Errors
    /// Another running modem holds it, or the lock file cannot be opened.
    fn take_lock(&self) -> io::Result<()> {
        use rustix::fs::{FlockOperation, flock};
        let mut held = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        if held.is_some() {
            return Ok(());
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.lock_path())?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {
                *held = Some(file);
                Ok(())
            }
            Err(rustix::io::Errno::WOULDBLOCK) => Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} is another running modem's port ({} is locked): give this modem another path",
                    self.link.display(),
                    self.lock_path().display()
                ),
            )),
            Err(err) => Err(err.into()),
        }
    }

    /// The link's path.
    pub fn path(&self) -> &Path {
        &self.link
    }

    /// Points the link at `target`, atomically (a temporary link renamed
    /// over the old one), so a host never sees it half-made.
    ///
    /// # Errors
    /// The link's folder is not writable, `link` is a real file, or another
    /// running modem owns it.
    pub fn point_to(&self, target: &Path) -> io::Result<()> {
        self.refuse_real_file()?;
        self.take_lock()?;
        let mut tmp = self.link.clone().into_os_string();
        tmp.push(format!(".{}.tmp", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(target, &tmp)?;
        std::fs::rename(&tmp, &self.link)
    }

    /// Removes the link (the port is gone, as `/dev/ttyUSB2` is while a
    /// module reboots); [`point_to`](Self::point_to) makes it again. A
    /// missing link is not an error.
    ///
    /// # Errors
    /// `link` is a real file, or cannot be removed.
    pub fn remove(&self) -> io::Result<()> {
        self.refuse_real_file()?;
        if !self.holds_lock() {
            // Never made by this one: not ours to take away.
            return Ok(());
        }
        match std::fs::remove_file(&self.link) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn refuse_real_file(&self) -> io::Result<()> {
        if let Ok(meta) = std::fs::symlink_metadata(&self.link)
            && !meta.file_type().is_symlink()
        {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a symlink", self.link.display()),
            ));
        }
        Ok(())
    }
}

impl Drop for PtyLink {
    fn drop(&mut self) {
        if std::fs::symlink_metadata(&self.link).is_ok_and(|m| m.file_type().is_symlink())
            && self.holds_lock()
        {
            let _ = std::fs::remove_file(&self.link);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_another_live_modem_owns_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("modem");
        let (pts_a, pts_b) = (dir.path().join("pts-a"), dir.path().join("pts-b"));
        std::fs::write(&pts_a, b"").unwrap();
        std::fs::write(&pts_b, b"").unwrap();
        let a = PtyLink::new(&path);
        a.point_to(&pts_a).unwrap();
        // A second modem given the same path is refused, and leaves it
        // (a separate open file: flock is per open file, as across
        // processes).
        let b = PtyLink::new(&path);
        let err = b.point_to(&pts_b).unwrap_err();
        assert!(err.to_string().contains("another running modem"), "{err}");
        b.remove().unwrap();
        drop(b);
        assert_eq!(std::fs::read_link(&path).unwrap(), pts_a);
        // Its own link it replaces (a reboot's new PTY) and removes.
        a.point_to(&pts_b).unwrap();
        assert_eq!(std::fs::read_link(&path).unwrap(), pts_b);
        a.remove().unwrap();
        assert!(std::fs::symlink_metadata(&path).is_err());
        a.point_to(&pts_a).unwrap();
        drop(a);
        // A link left by a modem that is gone (its lock released), even
        // one pointing at a PTY that exists (the number reused), is taken.
        std::os::unix::fs::symlink(&pts_b, &path).unwrap();
        let c = PtyLink::new(&path);
        c.point_to(&pts_a).unwrap();
        drop(c);
        assert!(std::fs::symlink_metadata(&path).is_err(), "removed on drop");
    }

    async fn bounded<F: std::future::Future>(f: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(10), f)
            .await
            .expect("finished in time")
    }

    /// CPU clock ticks (user + system) of the calling thread only: other
    /// tests run in parallel threads of the same process, so the process's
    /// total would count their work too.
    fn thread_cpu_ticks() -> u64 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    }

    #[tokio::test]
    async fn host_side_sees_raw_bytes_and_eio_after_close() {
        let pty = Pty::open().unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(bounded(pty.read(&mut buf)).await.unwrap(), PortRead::NoHost);
        assert_eq!(bounded(pty.read(&mut buf)).await.unwrap(), PortRead::NoHost);
        let mut host = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(pty.slave_path())
            .unwrap();
        assert_eq!(bounded(pty.read(&mut buf)).await.unwrap(), PortRead::Idle);
        host.write_all(b"AT\r").unwrap();
        let n = match bounded(pty.read(&mut buf)).await.unwrap() {
            PortRead::Data(n) => n,
            other => panic!("{other:?}"),
        };
        assert_eq!(&buf[..n], b"AT\r", "raw: no CR translation");
        bounded(pty.write_all(b"\r\nOK\r\n")).await.unwrap();
        let mut got = [0u8; 6];
        host.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"\r\nOK\r\n", "raw: no echo, no NL translation");
        drop(host);
        assert_eq!(bounded(pty.read(&mut buf)).await.unwrap(), PortRead::NoHost);
        // The host reopens, then the modem "reboots": reads fail.
        let mut host = std::fs::File::open(pty.slave_path()).unwrap();
        drop(pty);
        let err = host.read(&mut buf);
        assert!(matches!(err, Ok(0)) || err.is_err(), "{err:?}");
    }

    /// Regression: registered with Tokio, a master whose slave had once
    /// closed stayed "readable" for ever and `read` spun at full CPU while
    /// a silent host held the port.
    ///
    /// A current-thread runtime runs the read loop, its timers and its
    /// reactor on this test's own thread, so that thread's CPU time is all
    /// the port costs, whatever other tests do meanwhile.
    #[tokio::test(flavor = "current_thread")]
    async fn a_silent_host_costs_no_cpu() {
        let pty = Pty::open().unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(bounded(pty.read(&mut buf)).await.unwrap(), PortRead::NoHost);
        let _host = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(pty.slave_path())
            .unwrap();
        let before = thread_cpu_ticks();
        let wall = std::time::Instant::now();
        while wall.elapsed() < Duration::from_millis(500) {
            assert_eq!(bounded(pty.read(&mut buf)).await.unwrap(), PortRead::Idle);
        }
        // Clock ticks are 10 ms: a spinning loop would burn ~50.
        let spent = thread_cpu_ticks() - before;
        assert!(spent < 20, "{spent} ticks of CPU in 500 ms");
    }

    /// Regression: a flush from the master side alone missed bytes the
    /// kernel had already moved into the slave's line discipline.
    #[tokio::test]
    async fn unread_lines_are_not_left_for_the_next_host() {
        let pty = Pty::open().unwrap();
        bounded(pty.write_all(b"\r\nstale\r\n")).await.unwrap();
        pty.discard_unread().unwrap();
        bounded(pty.write_all(b"\r\nstale again\r\n"))
            .await
            .unwrap();
        // Not a wait for a condition: gives the kernel's work queue time to
        // move the bytes on, the case that broke.
        tokio::time::sleep(Duration::from_millis(20)).await;
        pty.discard_unread().unwrap();
        let mut host = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(pty.slave_path())
            .unwrap();
        bounded(pty.write_all(b"fresh")).await.unwrap();
        let mut got = [0u8; 5];
        host.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"fresh");
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
            link.remove().unwrap();
            assert!(std::fs::symlink_metadata(&link_path).is_err());
            link.remove().unwrap();
            link.point_to(Path::new("/dev/null")).unwrap();
        }
        assert!(std::fs::symlink_metadata(&link_path).is_err());
        std::fs::write(&link_path, b"x").unwrap();
        assert!(
            PtyLink::new(&link_path)
                .point_to(Path::new("/dev/null"))
                .is_err()
        );
        assert!(PtyLink::new(&link_path).remove().is_err());
        assert!(link_path.exists(), "a real file is never removed");
    }
}
