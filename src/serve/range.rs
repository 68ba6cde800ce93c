//! HTTP `Range` and conditional request handling (RFC 9110 §13, §14).
//!
//! Hand-written because resuming a firmware download must never splice two
//! versions of a package: `If-Range` is honoured with the strong comparison
//! of entity tags only (§13.1.5), and a stale validator yields the whole
//! new file. Pure functions over header values, so every rule is
//! unit-tested.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use http::header::{
    IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE, RANGE,
};

/// What to send for a `Range` header, given the representation length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeDecision {
    /// No (usable) range: 200 with the whole body. Also chosen for several
    /// ranges (§14.2 allows ignoring them; a module never sends them) and for
    /// a syntactically invalid header (§14.2: "MAY ignore").
    Full,
    /// One satisfiable range: 206, bytes `start..=end`.
    Partial {
        /// First byte offset.
        start: u64,
        /// Last byte offset, inclusive.
        end: u64,
    },
    /// 416 with `Content-Range: bytes */<len>` (§15.5.17).
    Unsatisfiable {
        /// The first byte offset asked for (the representation length for
        /// a zero-length suffix range), for the download log.
        start: u64,
    },
}

/// Parses one `Range` header value against a body of `len` bytes
/// (RFC 9110 §14.1.2 byte-range syntax: `N-M`, `N-`, `-N`). A zero-length
/// body is always sent whole: no byte range can describe a part of it
/// (§14.1.1 counts a suffix range as satisfiable there, §14.2 lets the
/// server ignore the header).
pub fn parse_range(value: &str, len: u64) -> RangeDecision {
    let value = value.trim();
    if len == 0 {
        return RangeDecision::Full;
    }
    let Some((unit, set)) = value.split_once('=') else {
        return RangeDecision::Full;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return RangeDecision::Full;
    }
    let specs: Vec<&str> = set
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if specs.len() != 1 {
        return RangeDecision::Full;
    }
    let Some((first, last)) = specs[0].split_once('-') else {
        return RangeDecision::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    // A position too large for u64 is still a position (§14.1.2): saturate.
    let number = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().unwrap_or(u64::MAX))
    };
    match (first.is_empty(), last.is_empty()) {
        // Suffix range: the last N bytes.
        (true, false) => {
            let Some(n) = number(last) else {
                return RangeDecision::Full;
            };
            if n == 0 {
                return RangeDecision::Unsatisfiable { start: len };
            }
            RangeDecision::Partial {
                start: len.saturating_sub(n),
                end: len - 1,
            }
        }
        (false, _) => {
            let Some(start) = number(first) else {
                return RangeDecision::Full;
            };
            let end = if last.is_empty() {
                None
            } else {
                match number(last) {
                    Some(e) if e >= start => Some(e),
                    // A last-pos below first-pos, or garbage, is invalid
                    // syntax: ignore the header.
                    _ => return RangeDecision::Full,
                }
            };
            if start >= len {
                return RangeDecision::Unsatisfiable { start };
            }
            RangeDecision::Partial {
                start,
                end: end.map_or(len - 1, |e| e.min(len - 1)),
            }
        }
        (true, true) => RangeDecision::Full,
    }
}

/// The validators of the selected representation.
#[derive(Debug, Clone)]
pub struct Validators<'a> {
    /// Strong entity tag, quoted (`"…"`).
    pub etag: &'a str,
    /// Last modification time (compared at one-second resolution, as HTTP
    /// dates carry).
    pub last_modified: SystemTime,
}

/// The result of evaluating the preconditions of a GET/HEAD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// Serve normally; `honour_range` says whether a `Range` header may be
    /// applied (false when `If-Range` did not match).
    Proceed {
        /// Apply the `Range` header (if any).
        honour_range: bool,
    },
    /// 304 Not Modified (§15.4.5).
    NotModified,
    /// 412 Precondition Failed (§15.5.13).
    Failed,
}

/// Evaluates `If-Match`, `If-Unmodified-Since`, `If-None-Match`,
/// `If-Modified-Since` and `If-Range` in the order of RFC 9110 §13.2.2 for
/// a GET or HEAD. A field sent on several lines is one comma-separated
/// list (§5.3); a date field sent twice no longer parses and is ignored,
/// as an invalid date is.
pub fn evaluate_preconditions(headers: &HeaderMap, v: &Validators<'_>) -> Precondition {
    let text = |name| {
        let mut lines = headers.get_all(name).iter().peekable();
        lines.peek()?;
        let values: Option<Vec<&str>> = lines.map(|h| h.to_str().ok()).collect();
        Some(values?.join(", "))
    };
    let modified = truncate_to_secs(v.last_modified);

    if let Some(if_match) = text(IF_MATCH) {
        if !etag_list_matches(&if_match, v.etag, true) {
            return Precondition::Failed;
        }
    } else if let Some(date) = text(IF_UNMODIFIED_SINCE).as_deref().and_then(parse_date)
        && modified > date
    {
        return Precondition::Failed;
    }

    if let Some(if_none_match) = text(IF_NONE_MATCH) {
        if etag_list_matches(&if_none_match, v.etag, false) {
            return Precondition::NotModified;
        }
    } else if let Some(date) = text(IF_MODIFIED_SINCE).as_deref().and_then(parse_date)
        && modified <= date
    {
        return Precondition::NotModified;
    }

    let honour_range = match text(IF_RANGE) {
        None => true,
        Some(if_range) => if_range_matches(&if_range, v.etag),
    };
    // Without a Range header If-Range means nothing (§13.1.5).
    let honour_range = honour_range || headers.get(RANGE).is_none();
    Precondition::Proceed { honour_range }
}

/// `If-Range` (§13.1.5): an entity tag must match strongly; a weak tag
/// never matches. A date never matches either: §13.1.5 honours one only
/// when the Last-Modified is strong (§8.8.2.2), and a file's modification
/// second cannot tell two builds apart (`cp -p`, `rsync -a` and
/// reproducible builds give different packages the same one), so
/// resuming on a date could splice two versions. Such a client gets the
/// whole package.
fn if_range_matches(value: &str, etag: &str) -> bool {
    let value = value.trim();
    !value.starts_with("W/") && value == etag
}

/// Whether a comma-separated entity-tag list (or `*`) matches `etag`.
/// `strong` selects the strong comparison (§8.8.3.2); otherwise weak.
fn etag_list_matches(list: &str, etag: &str, strong: bool) -> bool {
    let list = list.trim();
    if list == "*" {
        return true;
    }
    list.split(',').map(str::trim).any(|candidate| {
        if let Some(weak) = candidate.strip_prefix("W/") {
            !strong && weak == etag
        } else {
            candidate == etag
        }
    })
}

fn parse_date(s: &str) -> Option<SystemTime> {
    httpdate::parse_http_date(s.trim()).ok()
}

/// Drops sub-second precision so comparisons match what HTTP dates carry.
pub fn truncate_to_secs(t: SystemTime) -> SystemTime {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => UNIX_EPOCH + Duration::from_secs(d.as_secs()),
        Err(_) => UNIX_EPOCH,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn single_ranges() {
        use RangeDecision::*;
        assert_eq!(
            parse_range("bytes=0-99", 1000),
            Partial { start: 0, end: 99 }
        );
        assert_eq!(
            parse_range("bytes=100-199", 1000),
            Partial {
                start: 100,
                end: 199
            }
        );
        assert_eq!(
            parse_range("bytes=900-", 1000),
            Partial {
                start: 900,
                end: 999
            }
        );
        assert_eq!(
            parse_range("bytes=-100", 1000),
            Partial {
                start: 900,
                end: 999
            }
        );
        assert_eq!(
            parse_range("bytes=-5000", 1000),
            Partial { start: 0, end: 999 }
        );
        assert_eq!(
            parse_range("bytes=990-5000", 1000),
            Partial {
                start: 990,
                end: 999
            }
        );
        assert_eq!(parse_range("BYTES = 1-1", 10), Partial { start: 1, end: 1 });
    }

    #[test]
    fn unsatisfiable_and_ignored_ranges() {
        use RangeDecision::*;
        assert_eq!(
            parse_range("bytes=1000-", 1000),
            Unsatisfiable { start: 1000 }
        );
        assert_eq!(parse_range("bytes=-0", 1000), Unsatisfiable { start: 1000 });
        // A zero-length body has no part to send: always whole.
        assert_eq!(parse_range("bytes=0-", 0), Full);
        assert_eq!(parse_range("bytes=-5", 0), Full);
        assert_eq!(parse_range("bytes=0-1,5-6", 1000), Full);
        assert_eq!(parse_range("bytes=5-1", 1000), Full);
        assert_eq!(parse_range("items=0-1", 1000), Full);
        assert_eq!(parse_range("bytes=abc", 1000), Full);
        assert_eq!(parse_range("bytes=-", 1000), Full);
        assert_eq!(parse_range("bytes=+1-2", 1000), Full);
        assert_eq!(
            parse_range("bytes=99999999999999999999999-", 1000),
            Unsatisfiable { start: u64::MAX }
        );
        assert_eq!(
            parse_range("bytes=-99999999999999999999999", 1000),
            Partial { start: 0, end: 999 }
        );
    }

    fn headers(pairs: &[(http::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(k.clone(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    const ETAG: &str = "\"abc\"";

    fn validators() -> Validators<'static> {
        Validators {
            etag: ETAG,
            last_modified: UNIX_EPOCH + Duration::from_millis(1_700_000_000_500),
        }
    }

    fn date(secs: u64) -> String {
        httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs))
    }

    #[test]
    fn if_range_only_a_strong_etag() {
        let v = validators();
        let proceed = |honour_range| Precondition::Proceed { honour_range };
        let with = |value: &str| {
            evaluate_preconditions(&headers(&[(RANGE, "bytes=0-1"), (IF_RANGE, value)]), &v)
        };
        assert_eq!(with(ETAG), proceed(true));
        assert_eq!(with("\"stale\""), proceed(false));
        assert_eq!(with("W/\"abc\""), proceed(false));
        // A date, even the exact Last-Modified, is weak (§8.8.2.2).
        assert_eq!(with(&date(1_700_000_000)), proceed(false));
        assert_eq!(with(&date(1_600_000_000)), proceed(false));
        // Without a Range header If-Range is not looked at.
        let alone = headers(&[(IF_RANGE, "\"stale\"")]);
        assert_eq!(evaluate_preconditions(&alone, &v), proceed(true));
    }

    #[test]
    fn a_field_on_several_lines_is_one_list() {
        let v = validators();
        let eval = |name: http::HeaderName, lines: &[&str]| {
            let mut h = HeaderMap::new();
            for line in lines {
                h.append(name.clone(), HeaderValue::from_str(line).unwrap());
            }
            evaluate_preconditions(&h, &v)
        };
        let proceed = Precondition::Proceed { honour_range: true };
        assert_eq!(eval(IF_MATCH, &["\"x\"", ETAG]), proceed);
        assert_eq!(eval(IF_MATCH, &["\"x\"", "\"y\""]), Precondition::Failed);
        assert_eq!(
            eval(IF_NONE_MATCH, &["\"x\"", ETAG]),
            Precondition::NotModified
        );
        // Two dates are no date: ignored.
        let late = date(1_800_000_000);
        assert_eq!(eval(IF_MODIFIED_SINCE, &[&late, &late]), proceed);
    }

    #[test]
    fn not_modified_and_failed() {
        let v = validators();
        let eval = |pairs: &[(http::HeaderName, &str)]| evaluate_preconditions(&headers(pairs), &v);
        assert_eq!(eval(&[(IF_NONE_MATCH, ETAG)]), Precondition::NotModified);
        assert_eq!(
            eval(&[(IF_NONE_MATCH, "W/\"abc\"")]),
            Precondition::NotModified
        );
        assert_eq!(eval(&[(IF_NONE_MATCH, "*")]), Precondition::NotModified);
        assert_eq!(
            eval(&[(IF_NONE_MATCH, "\"other\"")]),
            Precondition::Proceed { honour_range: true }
        );
        assert_eq!(
            eval(&[(IF_MODIFIED_SINCE, &date(1_700_000_000))]),
            Precondition::NotModified
        );
        assert_eq!(
            eval(&[(IF_MODIFIED_SINCE, &date(1_699_999_999))]),
            Precondition::Proceed { honour_range: true }
        );
        // If-None-Match takes precedence over If-Modified-Since (§13.1.3).
        assert_eq!(
            eval(&[
                (IF_NONE_MATCH, "\"other\""),
                (IF_MODIFIED_SINCE, &date(1_800_000_000))
            ]),
            Precondition::Proceed { honour_range: true }
        );
        assert_eq!(eval(&[(IF_MATCH, "\"other\"")]), Precondition::Failed);
        assert_eq!(eval(&[(IF_MATCH, "W/\"abc\"")]), Precondition::Failed);
        assert_eq!(
            eval(&[(IF_UNMODIFIED_SINCE, &date(1_600_000_000))]),
            Precondition::Failed
        );
        assert_eq!(
            eval(&[(IF_MODIFIED_SINCE, "garbage")]),
            Precondition::Proceed { honour_range: true }
        );
    }
}
