//! The control routes of the admin listener: change and read a running
//! server from any language, without a restart (issue 15 item 2).
//!
//! - `PUT /faults`: the body is fault rules, one per line, in the syntax of
//!   `--fault` (blank lines and `#` comments ignored; an empty body clears
//!   them). They replace the rules in force, like
//!   [`crate::serve::Server::set_faults`]; 400 names the line and the
//!   problem and changes nothing. Answers the rules now in force.
//! - `GET /faults`: the rules in force, one per line.
//! - `GET /downloads?since=N&timeout_ms=T`: the download records with
//!   sequence number ≥ `N` (default 0) as JSON lines — each the log line's
//!   object plus `"seq"` — waiting up to `T` ms (default 0, at most
//!   [`MAX_POLL`]) for the first one. The `X-Next-Since` header is the `N`
//!   to ask for next. Only the last [`crate::dlog::RECENT_CAPACITY`]
//!   records are kept in memory.
//! - `POST /packages/rescan`: re-scans the package folder now and answers
//!   `{"packages":N,"valid":M}` when done.

use std::time::Duration;

use http::{HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Serialize;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{AdminBody, json, text, with_type};
use crate::dlog::DownloadRecord;
use crate::serve::ServerControl;
use crate::serve::fault::FaultRule;

/// Longest a `GET /downloads` may wait (`timeout_ms` above it is cut to
/// it), so a forgotten client cannot hold a request open for ever.
pub const MAX_POLL: Duration = Duration::from_secs(60);

/// Largest `PUT /faults` body, bytes (a rule list, not an upload).
pub const MAX_FAULTS_BODY: usize = 64 * 1024;

/// `GET /faults`: the rules in force, one per line.
pub fn get_faults(control: &ServerControl) -> Response<AdminBody> {
    text(StatusCode::OK, format_rules(&control.faults()))
}

/// `PUT /faults`: replaces the rules with the body's, or answers 400 (bad
/// rule, not UTF-8) / 413 (body over [`MAX_FAULTS_BODY`]) and keeps them.
pub async fn put_faults(control: &ServerControl, body: Incoming) -> Response<AdminBody> {
    let bytes = match Limited::new(body, MAX_FAULTS_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("fault rules: more than {MAX_FAULTS_BODY} bytes\n"),
            );
        }
        Err(err) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("fault rules: cannot read the body: {err}\n"),
            );
        }
    };
    let Ok(body) = std::str::from_utf8(&bytes) else {
        return text(
            StatusCode::BAD_REQUEST,
            "fault rules: the body is not UTF-8\n".into(),
        );
    };
    match parse_rules(body) {
        Ok(rules) => {
            tracing::info!(
                rules = rules.len(),
                "fault rules replaced over the admin listener"
            );
            control.set_faults(rules);
            get_faults(control)
        }
        Err(problem) => text(StatusCode::BAD_REQUEST, format!("{problem}\n")),
    }
}

/// Fault rules, one per line (blank lines and `#` comments skipped).
///
/// # Errors
/// The first malformed rule: `line N: <rule>: <problem>`.
pub fn parse_rules(body: &str) -> Result<Vec<FaultRule>, String> {
    body.lines()
        .enumerate()
        .map(|(i, line)| (i + 1, line.trim()))
        .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
        .map(|(n, line)| line.parse().map_err(|e| format!("line {n}: {e}")))
        .collect()
}

fn format_rules(rules: &[FaultRule]) -> String {
    rules.iter().map(|r| format!("{r}\n")).collect()
}

/// The parameters of `GET /downloads`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DownloadsQuery {
    /// First sequence number wanted.
    pub since: u64,
    /// How long to wait for one, at most [`MAX_POLL`].
    pub timeout: Duration,
}

/// Reads `since=N&timeout_ms=T` (both optional).
///
/// # Errors
/// An unknown parameter or a value that is not a whole number.
pub fn parse_downloads_query(query: Option<&str>) -> Result<DownloadsQuery, String> {
    let mut q = DownloadsQuery {
        since: 0,
        timeout: Duration::ZERO,
    };
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let number = || {
            value
                .parse::<u64>()
                .map_err(|_| format!("{key}={value}: expected a whole number"))
        };
        match key {
            "since" => q.since = number()?,
            "timeout_ms" => q.timeout = Duration::from_millis(number()?).min(MAX_POLL),
            _ => return Err(format!("unknown parameter {key:?} (since, timeout_ms)")),
        }
    }
    Ok(q)
}

/// One line of `GET /downloads`: the log line's fields plus `seq`.
#[derive(Serialize)]
struct Numbered<'a> {
    seq: u64,
    #[serde(flatten)]
    record: &'a DownloadRecord,
}

/// `GET /downloads`: records from `since` on, long-polling up to the
/// timeout (or until shutdown) for the first one.
pub async fn downloads(
    control: &ServerControl,
    query: Option<&str>,
    shutdown: &CancellationToken,
) -> Response<AdminBody> {
    let q = match parse_downloads_query(query) {
        Ok(q) => q,
        Err(problem) => return text(StatusCode::BAD_REQUEST, format!("{problem}\n")),
    };
    let log = control.log();
    // Subscribe before looking, so a record emitted in between wakes us.
    let mut rx = log.subscribe();
    let deadline = Instant::now() + q.timeout;
    let records = loop {
        let records = log.since(q.since);
        if !records.is_empty() || Instant::now() >= deadline {
            break records;
        }
        let woke = tokio::select! {
            r = rx.recv() => !matches!(r, Err(RecvError::Closed)),
            _ = tokio::time::sleep_until(deadline) => true,
            _ = shutdown.cancelled() => false,
        };
        if !woke {
            break log.since(q.since);
        }
    };
    let next = records.last().map_or(q.since, |(seq, _)| seq + 1);
    let mut body = String::new();
    for (seq, record) in &records {
        match serde_json::to_string(&Numbered { seq: *seq, record }) {
            Ok(line) => {
                body.push_str(&line);
                body.push('\n');
            }
            Err(err) => tracing::error!(error = %err, "cannot encode download record"),
        }
    }
    let mut resp = with_type(StatusCode::OK, "application/x-ndjson", body);
    resp.headers_mut()
        .insert("x-next-since", HeaderValue::from(next));
    resp
}

/// `POST /packages/rescan`: re-scans now and answers `{"packages": N,
/// "valid": M, "found": [...]}` (each package's path, size, SHA-256,
/// validity and URLs, as `--ready-json` has them); 500 when the folder
/// cannot be read.
pub async fn rescan(control: &ServerControl) -> Response<AdminBody> {
    match control.rescan().await {
        Ok(()) => {
            let packages = control.catalog().packages();
            let valid = packages.iter().filter(|p| p.is_valid()).count();
            // Each package as `--ready-json` lists it, so a test rig can
            // give a module the URL of one copied in after start.
            let adv = control.advertised();
            let found: Vec<_> = packages.iter().map(|p| adv.listing(p)).collect();
            json(
                StatusCode::OK,
                &serde_json::json!({"packages": packages.len(), "valid": valid, "found": found}),
            )
        }
        Err(err) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot re-scan the package folder: {err}\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_are_one_per_line_and_a_bad_one_names_its_line() {
        let rules =
            parse_rules("# comment\nstatus=503,protocol=http\n\n  not-found,times=1 \n").unwrap();
        assert_eq!(rules.len(), 2);
        assert!(parse_rules("").unwrap().is_empty());
        let err = parse_rules("status=503\nexplode=now\n").unwrap_err();
        assert!(err.starts_with("line 2: "), "{err}");
        assert!(err.contains("explode"), "{err}");
        let round = format_rules(&rules);
        assert_eq!(format_rules(&parse_rules(&round).unwrap()), round);
    }

    #[test]
    fn downloads_query_defaults_caps_and_refusals() {
        assert_eq!(
            parse_downloads_query(None).unwrap(),
            DownloadsQuery {
                since: 0,
                timeout: Duration::ZERO
            }
        );
        let q = parse_downloads_query(Some("since=7&timeout_ms=250")).unwrap();
        assert_eq!((q.since, q.timeout), (7, Duration::from_millis(250)));
        let q = parse_downloads_query(Some("timeout_ms=99999999")).unwrap();
        assert_eq!(q.timeout, MAX_POLL);
        assert!(parse_downloads_query(Some("since=-1")).is_err());
        assert!(parse_downloads_query(Some("since")).is_err());
        assert!(parse_downloads_query(Some("sinse=1")).is_err());
    }
}
