//! Runtime control of the virtual modem (`modem --control <ADDR>`): a TCP
//! listener speaking JSON lines, one request per line, each answered with
//! one JSON line, so a test rig in any language can change the module's
//! world while a host talks to it.
//!
//! | request | effect | answer |
//! |---|---|---|
//! | `{"cmd":"fault","set":"network-down"}` | the network goes away now: a download under way ends with the family's no-network code (`FTPEND,601`, `HTTPEND,701`; `ec200` 605/707), new downloads fail so, registration reads `2` | `{"ok":true}` |
//! | `{"cmd":"fault","clear":"network-down"}` | the network is back | `{"ok":true}` |
//! | `{"cmd":"reboot"}` | the module reboots now, as after `AT+CFUN=1,1` (a FOTA run ends) | `{"ok":true}` |
//! | `{"cmd":"urc","line":"+QIND: ..."}` | the line is printed on every open port as a URC | `{"ok":true}` |
//! | `{"cmd":"signal","csq":20}` | `AT+CSQ` shows `<rssi>` 0–31 or 99 | `{"ok":true}` |
//! | `{"cmd":"state"}` | — | `{"ok":true,"version":…,"model":…,"profile":…,"powered":…,"upgrading":…,"network_down":…,"csq":…,"files":[{"name":…,"size":…}],"last_fota":{"urc":"FTPEND","code":601}}` (`last_fota` null before any end) |
//!
//! A request that does not parse, or that cannot be done, is answered
//! `{"ok":false,"error":"<why>"}` and the connection stays. Only
//! `network-down` changes at run time: the other module faults (`dns-fail`,
//! `power-cut=P`, …) are fixed when the module is built (`--fault`). Lines
//! over [`MAX_REQUEST`] bytes close the connection.

use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::modem::port;

/// Longest request line, bytes.
pub const MAX_REQUEST: usize = 4096;
/// Longest line a `urc` request may inject, bytes.
pub const MAX_URC: usize = 1024;
/// The one fault that changes at run time.
pub const NETWORK_DOWN: &str = "network-down";

/// One control request (the JSON line's `cmd` picks the variant).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// Sets or clears a fault (exactly one of the two).
    Fault {
        /// The fault to set.
        set: Option<String>,
        /// The fault to clear.
        clear: Option<String>,
    },
    /// Reboots the module now.
    Reboot {},
    /// Prints `line` as a URC.
    Urc {
        /// The line, without `\r\n`.
        line: String,
    },
    /// Sets the signal quality `AT+CSQ` shows.
    Signal {
        /// `<rssi>`: 0–31, or 99 (unknown).
        csq: u8,
    },
    /// Reads the module's state.
    State {},
}

impl Request {
    /// Parses and checks one request line.
    ///
    /// # Errors
    /// Why the request is refused, for the `error` field.
    pub fn parse(line: &str) -> Result<Request, String> {
        let request: Request = serde_json::from_str(line).map_err(|e| e.to_string())?;
        match &request {
            Request::Fault { set, clear } => match (set.as_deref(), clear.as_deref()) {
                (Some(NETWORK_DOWN), None) | (None, Some(NETWORK_DOWN)) => {}
                (Some(_), Some(_)) | (None, None) => {
                    return Err("fault: give exactly one of \"set\" and \"clear\"".to_string());
                }
                (Some(other), None) | (None, Some(other)) => {
                    return Err(format!(
                        "fault {other:?}: only {NETWORK_DOWN:?} changes at run time; \
                         other faults are fixed when the module is built (--fault)"
                    ));
                }
            },
            Request::Urc { line }
                if line.is_empty()
                    || line.len() > MAX_URC
                    || line.chars().any(char::is_control) =>
            {
                return Err(format!(
                    "urc: the line must be 1 to {MAX_URC} bytes without control characters"
                ));
            }
            Request::Signal { csq } if *csq > 31 && *csq != 99 => {
                return Err("signal: csq is 0-31 or 99".to_string());
            }
            _ => {}
        }
        Ok(request)
    }
}

/// A request on its way to the session, with where its answer goes.
#[derive(Debug)]
pub(crate) struct Envelope {
    pub request: Request,
    pub answer: oneshot::Sender<Value>,
}

/// The answer to a request that failed.
pub(crate) fn refused(why: impl std::fmt::Display) -> Value {
    json!({"ok": false, "error": why.to_string()})
}

/// Accepts control clients until cancelled; each connection's requests go
/// to the session in order.
pub(crate) fn spawn_listener(
    listener: TcpListener,
    session: mpsc::UnboundedSender<Envelope>,
    cancel: CancellationToken,
) -> JoinHandle<()> {
    let token = cancel.clone();
    port::accept_loop(listener, cancel, move |stream, peer| {
        crate::conn_log!(info, %peer, "control client connected");
        tokio::spawn(serve(stream, session.clone(), token.child_token()));
        true
    })
}

async fn serve(
    stream: TcpStream,
    session: mpsc::UnboundedSender<Envelope>,
    cancel: CancellationToken,
) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let mut line = Vec::new();
        let mut limited = (&mut reader).take(MAX_REQUEST as u64 + 1);
        let read = tokio::select! {
            _ = cancel.cancelled() => return,
            read = limited.read_until(b'\n', &mut line) => read,
        };
        if !matches!(read, Ok(n) if n > 0) {
            return;
        }
        let too_long = line.len() > MAX_REQUEST;
        let answer = if too_long {
            refused(format!("request over {MAX_REQUEST} bytes"))
        } else {
            let text = String::from_utf8_lossy(&line);
            match Request::parse(text.trim()) {
                Ok(request) => ask(&session, request).await,
                Err(why) => refused(why),
            }
        };
        let mut out = answer.to_string();
        out.push('\n');
        if write.write_all(out.as_bytes()).await.is_err() || too_long {
            return;
        }
    }
}

async fn ask(session: &mpsc::UnboundedSender<Envelope>, request: Request) -> Value {
    let (answer, rx) = oneshot::channel();
    if session.send(Envelope { request, answer }).is_err() {
        return refused("the modem is shutting down");
    }
    rx.await
        .unwrap_or_else(|_| refused("the modem is shutting down"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_are_checked() {
        assert_eq!(
            Request::parse(r#"{"cmd":"fault","set":"network-down"}"#),
            Ok(Request::Fault {
                set: Some(NETWORK_DOWN.into()),
                clear: None
            })
        );
        assert_eq!(
            Request::parse(r#"{"cmd":"signal","csq":99}"#),
            Ok(Request::Signal { csq: 99 })
        );
        assert_eq!(Request::parse(r#"{"cmd":"state"}"#), Ok(Request::State {}));
        assert_eq!(
            Request::parse(r#"{"cmd":"urc","line":"+QIND: \"x\""}"#),
            Ok(Request::Urc {
                line: "+QIND: \"x\"".into()
            })
        );
        for bad in [
            r#"{"cmd":"fault","set":"dns-fail"}"#,
            r#"{"cmd":"fault"}"#,
            r#"{"cmd":"fault","set":"network-down","clear":"network-down"}"#,
            r#"{"cmd":"signal","csq":32}"#,
            r#"{"cmd":"signal","csq":-1}"#,
            r#"{"cmd":"urc","line":"a\r\nOK"}"#,
            r#"{"cmd":"urc","line":""}"#,
            r#"{"cmd":"reboot","now":true}"#,
            r#"{"cmd":"dance"}"#,
            "not json",
        ] {
            assert!(Request::parse(bad).is_err(), "{bad}");
        }
    }
}
