//! The live campaign of the admin listener: `GET /campaign` (the HTML
//! page of [`crate::campaign::html::render`], reloading itself) and
//! `GET /campaign.json` (the same data as `qfota-serve report --json`).
//!
//! Built on each request from the download records the server holds in
//! memory — the ring behind `/downloads`, at most
//! [`crate::dlog::RECENT_CAPACITY`] records of about 2 KiB each — so memory
//! stays bounded however long the server runs: the page covers the most
//! recent attempts (it says how many of how many), and `report` over the
//! log file covers all of them. Nothing is aggregated in advance: the
//! serving path pays nothing, and a page costs one pass over at most 4,096
//! records.
//!
//! Query parameters, all optional, as `report`'s flags: `package=GLOB`,
//! `since=TIME`, `until=TIME` (RFC 3339 or a span back from now: `30m`),
//! `recent=N` (default 20), and for the page `refresh=SECS` (default
//! [`DEFAULT_REFRESH`], 1–3600).

use std::time::Duration;

use chrono::Utc;
use http::{Response, StatusCode};

use super::{AdminBody, text, with_type};
use crate::campaign::{self, Campaign, DEFAULT_RECENT, Filter, MemoryWindow};
use crate::catalog::path::percent_decode;
use crate::serve::ServerControl;

/// How often the live page reloads itself unless `refresh=` says otherwise.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(5);

/// Most attempts `recent=` may ask for (the ring holds no more).
const MAX_RECENT: usize = crate::dlog::RECENT_CAPACITY;

/// The parameters of `/campaign` and `/campaign.json`.
#[derive(Debug, Clone)]
pub struct CampaignQuery {
    /// Which records count.
    pub filter: Filter,
    /// How many recent attempts to list.
    pub recent: usize,
    /// How often the page reloads itself.
    pub refresh: Duration,
}

/// Reads `package=GLOB&since=T&until=T&recent=N&refresh=S`, each value
/// percent-decoded.
///
/// # Errors
/// An unknown parameter or a value that does not parse, named.
pub fn parse_query(query: Option<&str>) -> Result<CampaignQuery, String> {
    let mut q = CampaignQuery {
        filter: Filter::default(),
        recent: DEFAULT_RECENT,
        refresh: DEFAULT_REFRESH,
    };
    let now = Utc::now();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, raw) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(&raw.replace('+', " ")).map_err(|e| format!("{key}: {e}"))?;
        let bad = |e: String| format!("{key}={value}: {e}");
        let number = |max: u64| match value.parse::<u64>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(bad(format!("expected a whole number from 1 to {max}"))),
        };
        match key {
            "package" => {
                let glob = campaign::package_glob(&value).map_err(|e| bad(e.to_string()))?;
                q.filter.package = Some(glob);
            }
            "since" => q.filter.since = Some(campaign::parse_instant(&value, now).map_err(bad)?),
            "until" => q.filter.until = Some(campaign::parse_instant(&value, now).map_err(bad)?),
            "recent" => q.recent = number(MAX_RECENT as u64)? as usize,
            "refresh" => q.refresh = Duration::from_secs(number(3600)?),
            _ => {
                return Err(format!(
                    "unknown parameter {key:?} (package, since, until, recent, refresh)"
                ));
            }
        }
    }
    Ok(q)
}

/// The campaign of the records in memory that `q` selects.
pub fn build(control: &ServerControl, q: &CampaignQuery) -> Campaign {
    let log = control.log();
    let total = log.next_seq();
    let records = log.recent();
    let mut c = Campaign::build(&records, &q.filter, q.recent);
    c.window = Some(MemoryWindow {
        kept: records.len() as u64,
        total,
    });
    c
}

/// `GET /campaign` (`json` false) or `GET /campaign.json`.
pub fn respond(control: &ServerControl, query: Option<&str>, json: bool) -> Response<AdminBody> {
    let q = match parse_query(query) {
        Ok(q) => q,
        Err(problem) => return text(StatusCode::BAD_REQUEST, format!("{problem}\n")),
    };
    let c = build(control, &q);
    if json {
        match serde_json::to_string_pretty(&c) {
            Ok(body) => with_type(StatusCode::OK, "application/json", body + "\n"),
            Err(err) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{err}\n")),
        }
    } else {
        with_type(
            StatusCode::OK,
            "text/html; charset=utf-8",
            campaign::html::render(&c, Some(q.refresh)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_takes_reports_filters_and_names_what_is_wrong() {
        let q = parse_query(None).unwrap();
        assert_eq!((q.recent, q.refresh), (DEFAULT_RECENT, DEFAULT_REFRESH));
        let q = parse_query(Some("package=Jun%2F*.zip&since=2h&recent=5&refresh=30")).unwrap();
        assert!(q.filter.package.unwrap().is_match("Jun/a.zip"));
        assert!(q.filter.since.is_some());
        assert_eq!((q.recent, q.refresh), (5, Duration::from_secs(30)));
        for (bad, names) in [
            ("recent=0", "recent=0"),
            ("refresh=99999", "refresh=99999"),
            ("since=yesterday", "since=yesterday"),
            ("package=a[", "package=a["),
            ("colour=red", "\"colour\""),
        ] {
            let err = parse_query(Some(bad)).unwrap_err();
            assert!(err.contains(names), "{bad}: {err}");
        }
    }
}
