//! FTP download as a module does it (seeds 000–004 §3, `<FTP_URL>`): over
//! the connected control socket, `USER`/`PASS` from the URL, `TYPE I`,
//! `SIZE`, then `PASV` (`EPSV` over IPv6) + `RETR`; the bytes received
//! must match `SIZE`.
//!
//! Uses suppaftp's tokio client; every step is bounded by the no-progress
//! timeout, and every failure becomes a [`DownloadError`] cause.

use std::future::Future;
use std::io::ErrorKind;
use std::time::Duration;

use suppaftp::tokio::AsyncFtpStream;
use suppaftp::types::{FileType, Response};
use suppaftp::{FtpError, FtpResult};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::cause::DownloadError;
use super::progress::{Progress, Spool};
use crate::sim::command::FotaUrl;
use crate::sim::package::PackageData;

/// Read size for the data connection, in bytes.
const CHUNK: usize = 16 * 1024;

/// Runs the FTP session on `control` (already connected) and returns the
/// file's bytes.
pub(super) async fn fetch(
    control: TcpStream,
    url: &FotaUrl,
    timeout: Duration,
    progress: &mut Progress<'_>,
) -> Result<PackageData, DownloadError> {
    let ipv6 = control.peer_addr().is_ok_and(|a| a.is_ipv6());
    let mut ftp = step(
        timeout,
        "the greeting",
        AsyncFtpStream::connect_with_stream(control),
    )
    .await?;
    // `PASV` answers an IPv4 address only (RFC 959): over IPv6 the data
    // connection is asked for with `EPSV` (RFC 2428), as curl and lftp do.
    if ipv6 {
        ftp.set_mode(suppaftp::types::Mode::ExtendedPassive);
    }
    let mut ftp = ftp.passive_stream_builder(move |addr| {
        Box::pin(async move {
            match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
                Ok(result) => result.map_err(FtpError::ConnectionError),
                Err(_) => Err(FtpError::ConnectionError(std::io::Error::new(
                    ErrorKind::TimedOut,
                    "data connection timed out",
                ))),
            }
        })
    });
    step(
        timeout,
        "USER/PASS",
        ftp.login(url.ftp_user(), url.ftp_password()),
    )
    .await?;
    step(timeout, "TYPE I", ftp.transfer_type(FileType::Binary)).await?;
    let size = step(timeout, "SIZE", ftp.size(&url.path)).await? as u64;
    progress.expect(Some(size))?;
    let mut data = step(timeout, "PASV/RETR", ftp.retr_as_stream(&url.path)).await?;

    let mut package = Spool::default();
    let mut chunk = vec![0u8; CHUNK];
    loop {
        let n = match tokio::time::timeout(timeout, data.read(&mut chunk)).await {
            Err(_) => {
                return Err(DownloadError::stalled(progress.received(), timeout));
            }
            Ok(Err(e)) if e.kind() == ErrorKind::ConnectionReset => {
                return Err(DownloadError::PeerReset {
                    received: progress.received(),
                });
            }
            Ok(Err(_)) => {
                return Err(DownloadError::Truncated {
                    received: progress.received(),
                    expected: Some(size),
                });
            }
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => n,
        };
        package.push(&chunk[..n])?;
        progress.advance(n).await?;
    }
    // The completion reply (226, or 426/451 when the server aborted).
    step(timeout, "the transfer reply", data.finish()).await?;
    let received = progress.received();
    if received < size {
        return Err(DownloadError::Truncated {
            received,
            expected: Some(size),
        });
    }
    if received > size {
        return Err(DownloadError::Overrun {
            received,
            expected: size,
        });
    }
    progress.complete();
    // A module does not wait on QUIT to use the package: the session is
    // closed politely on the side (a server that never answers QUIT gets
    // the control connection closed at the timeout).
    tokio::spawn(async move {
        let _ = tokio::time::timeout(timeout, ftp.quit()).await;
    });
    Ok(package.finish())
}

/// Awaits one FTP exchange within `timeout`, naming it in the cause.
async fn step<T>(
    timeout: Duration,
    command: &'static str,
    exchange: impl Future<Output = FtpResult<T>>,
) -> Result<T, DownloadError> {
    match tokio::time::timeout(timeout, exchange).await {
        Err(_) => Err(DownloadError::no_answer(command, timeout)),
        Ok(result) => result.map_err(|e| cause(command, timeout, e)),
    }
}

/// The cause behind a suppaftp error during `command`.
fn cause(command: &'static str, timeout: Duration, error: FtpError) -> DownloadError {
    match error {
        FtpError::ConnectionError(io) => match io.kind() {
            ErrorKind::UnexpectedEof
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe => DownloadError::ControlClosed,
            ErrorKind::TimedOut => DownloadError::no_answer(command, timeout),
            ErrorKind::ConnectionRefused
            | ErrorKind::HostUnreachable
            | ErrorKind::NetworkUnreachable => DownloadError::Connect {
                addr: format!("the data connection for {command}"),
                source: io,
            },
            _ => DownloadError::Other(format!("{command}: {io}")),
        },
        FtpError::UnexpectedResponse(response) => DownloadError::FtpReply {
            command,
            code: reply_code(&response),
            text: String::from_utf8_lossy(&response.body).trim().to_string(),
        },
        FtpError::BadResponse => DownloadError::Other(format!("malformed reply to {command}")),
        FtpError::InvalidAddress(e) => {
            DownloadError::Other(format!("bad address in reply to {command}: {e}"))
        }
        FtpError::DataConnectionAlreadyOpen => {
            DownloadError::Other("data connection already open".to_string())
        }
    }
}

/// The reply's three-digit code as the server sent it (suppaftp maps codes
/// it does not know to a catch-all status).
fn reply_code(response: &Response) -> u16 {
    response
        .body
        .get(..3)
        .and_then(|d| std::str::from_utf8(d).ok())
        .and_then(|d| d.parse().ok())
        .unwrap_or_else(|| u16::try_from(response.status.code()).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use suppaftp::Status;

    #[test]
    fn server_replies_keep_their_code() {
        let e = cause(
            "PASS",
            Duration::from_secs(1),
            FtpError::UnexpectedResponse(Response::new(
                Status::NotLoggedIn,
                b"530 Login incorrect.\r\n".to_vec(),
            )),
        );
        assert!(
            matches!(
                e,
                DownloadError::FtpReply {
                    code: 530,
                    command: "PASS",
                    ..
                }
            ),
            "{e}"
        );
        let odd = Response::new(Status::Unknown, b"599 odd\r\n".to_vec());
        assert_eq!(reply_code(&odd), 599);
    }

    #[test]
    fn closed_control_connection_is_its_own_cause() {
        let eof = std::io::Error::from(ErrorKind::UnexpectedEof);
        let e = cause(
            "SIZE",
            Duration::from_secs(1),
            FtpError::ConnectionError(eof),
        );
        assert!(matches!(e, DownloadError::ControlClosed), "{e}");
    }
}
