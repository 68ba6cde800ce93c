//! The campaign view: what a rollout looks like from the server's side,
//! computed from [`DownloadRecord`]s — per package the attempts, distinct
//! modules, outcomes, bytes, p50/p95 duration and the top failure reasons;
//! the most recent attempts; and attempts over time.
//!
//! It sits above [`crate::dlog`] (records in) and below its users: the
//! `report` subcommand (records read from log files by [`read`]) and the
//! admin listener's live page (records from the running server). Both turn
//! records into a [`Campaign`] with [`CampaignBuilder`] (or
//! [`Campaign::build`] over records in memory) and print it as a
//! terminal table ([`text`]), JSON (serde) or HTML ([`html`]).
//!
//! # Parts
//!
//! - this file: [`Filter`] (time window, package glob),
//!   [`CampaignBuilder`] and the shapes it fills;
//! - [`read`]: download-log files → records, line by line, with a count
//!   of the lines that were not records;
//! - [`text`]: the terminal table; [`html`]: the self-contained page.

pub mod html;
pub mod read;
pub mod text;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};

use chrono::{DateTime, TimeDelta, Utc};
use globset::GlobMatcher;
use serde::Serialize;

use crate::dlog::{DownloadRecord, Outcome, format_ts};

/// How many failure reasons [`PackageStats::top_failures`] keeps.
pub const TOP_FAILURES: usize = 3;

/// How many attempts [`Campaign::recent`] keeps by default.
pub const DEFAULT_RECENT: usize = 20;

/// How a package row without a path is labelled: attempts that never
/// named one (a refused FTP login).
pub const NO_PATH: &str = "(no path)";

/// The label of a package path: the path, or [`NO_PATH`] when empty.
pub fn path_label(path: &str) -> &str {
    if path.is_empty() { NO_PATH } else { path }
}

/// At most this many buckets in [`Campaign::timeline`]: enough for a
/// readable chart, few enough for a narrow screen.
pub const MAX_BUCKETS: usize = 48;

/// Which records a campaign counts.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only attempts that started at or after this instant.
    pub since: Option<DateTime<Utc>>,
    /// Only attempts that started before this instant.
    pub until: Option<DateTime<Utc>>,
    /// Only packages whose path matches this glob (`update-*.zip`,
    /// `Jun/**`: [`package_glob`]); matched against the record's `path`.
    pub package: Option<GlobMatcher>,
}

impl Filter {
    /// True when `record` falls in the window and matches the glob.
    pub fn accepts(&self, record: &DownloadRecord) -> bool {
        self.since.is_none_or(|s| record.ts >= s)
            && self.until.is_none_or(|u| record.ts < u)
            && self
                .package
                .as_ref()
                .is_none_or(|g| g.is_match(&record.path))
    }
}

/// The outcome classes the campaign counts. `refused` is the server saying
/// no to a request it understood (`refused` records); `other` is every
/// other attempt that sent no body: a failure (`not_found`,
/// `invalid_package`, `auth_failed`) or an answer without one by design
/// (`headers_only`: `HEAD`, `304`, listed among no failures).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Outcomes {
    /// Every byte asked for was sent.
    pub complete: u64,
    /// The transfer stopped part-way.
    pub aborted: u64,
    /// The request was refused.
    pub refused: u64,
    /// Not found, invalid package, failed login, or headers only.
    pub other: u64,
}

impl Outcomes {
    /// Counts `n` attempts that ended as `outcome`.
    fn add(&mut self, outcome: Outcome, n: u64) {
        let class = match outcome {
            Outcome::Complete => &mut self.complete,
            Outcome::Aborted => &mut self.aborted,
            Outcome::Refused => &mut self.refused,
            Outcome::NotFound
            | Outcome::InvalidPackage
            | Outcome::AuthFailed
            | Outcome::HeadersOnly => &mut self.other,
        };
        *class = class.saturating_add(n);
    }

    /// All attempts counted.
    pub fn total(&self) -> u64 {
        self.complete + self.aborted + self.refused + self.other
    }
}

/// One failure reason and how often it was seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailureReason {
    /// The record's `outcome` (`aborted`, `not_found`, …).
    pub outcome: &'static str,
    /// The record's `reason`, in words.
    pub reason: String,
    /// Attempts that ended this way.
    pub count: u64,
}

/// What the campaign counts of a set of attempts (one package's, one
/// replica's).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figures {
    /// Attempts of any outcome.
    pub attempts: u64,
    /// Distinct modules: FTP user names, else peer IP addresses.
    pub modules: u64,
    /// Attempts per outcome class.
    pub outcomes: Outcomes,
    /// Package bytes sent, over every attempt.
    pub bytes_sent: u64,
    /// Median duration of the complete attempts, milliseconds (`None`
    /// without one).
    pub p50_ms: Option<u64>,
    /// 95th percentile duration of the complete attempts, milliseconds.
    pub p95_ms: Option<u64>,
}

/// The campaign figures of one package path.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PackageStats {
    /// Package path as logged (relative to the package folder).
    pub path: String,
    /// Its figures (flattened into the JSON object).
    #[serde(flatten)]
    pub figures: Figures,
    /// The most frequent failure reasons (at most [`TOP_FAILURES`]), most
    /// frequent first.
    pub top_failures: Vec<FailureReason>,
}

/// The campaign figures of one replica (`--instance-id`), over every
/// package that replica served.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InstanceStats {
    /// The records' `instance`; `-` for records without one, beside the
    /// named replicas.
    pub instance: String,
    /// Its figures (flattened into the JSON object).
    #[serde(flatten)]
    pub figures: Figures,
}

/// Attempts that started in one time bucket, per outcome class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Bucket {
    /// Start of the bucket (inclusive).
    #[serde(serialize_with = "ts_json")]
    pub start: DateTime<Utc>,
    /// Attempts per outcome class.
    pub outcomes: Outcomes,
}

/// The chart's series: attempts per outcome over equal time buckets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Timeline {
    /// Bucket width, seconds (a round value: 1 s, 10 s, 1 min, … 1 day).
    pub bucket_secs: u64,
    /// Consecutive buckets from the first attempt to the last; empty
    /// without attempts.
    pub buckets: Vec<Bucket>,
}

/// The whole campaign view.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Campaign {
    /// When this view was computed.
    #[serde(serialize_with = "ts_json")]
    pub generated: DateTime<Utc>,
    /// Start of the first and of the last attempt counted.
    #[serde(serialize_with = "opt_ts_json")]
    pub first: Option<DateTime<Utc>>,
    /// See `first`.
    #[serde(serialize_with = "opt_ts_json")]
    pub last: Option<DateTime<Utc>>,
    /// Attempts counted (after the filter).
    pub attempts: u64,
    /// Distinct modules over every package.
    pub modules: u64,
    /// Attempts per outcome class, every package.
    pub outcomes: Outcomes,
    /// Per package path, most attempts first (ties by path).
    pub packages: Vec<PackageStats>,
    /// Per replica, by name, when the records name more than one (logs of
    /// several replicas read together); empty otherwise.
    pub instances: Vec<InstanceStats>,
    /// The most recent attempts, newest first.
    pub recent: Vec<DownloadRecord>,
    /// Attempts and outcomes over time.
    pub timeline: Timeline,
    /// Log lines that were not records (torn, not JSON), when read from
    /// files; 0 otherwise.
    pub skipped_lines: u64,
    /// Set when the view was built from a running server's in-memory
    /// records (the admin listener's `/campaign`), which hold only the
    /// most recent attempts; absent for `report` over log files.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<MemoryWindow>,
}

/// Which attempts an in-memory campaign saw: the last `kept` of the
/// `total` the server recorded since it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MemoryWindow {
    /// Records held in memory and counted (before the filter): at most
    /// [`crate::dlog::RECENT_CAPACITY`].
    pub kept: u64,
    /// Records the server made since it started.
    pub total: u64,
}

/// Times in JSON as the log writes them (RFC 3339, UTC, milliseconds).
fn ts_json<S: serde::Serializer>(ts: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_ts(ts))
}

fn opt_ts_json<S: serde::Serializer>(ts: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match ts {
        Some(ts) => ts_json(ts, s),
        None => s.serialize_none(),
    }
}

/// Who made an attempt: the FTP user when there is one (modules of a
/// fleet usually log in with their own), else the peer IP address.
fn module_key(r: &DownloadRecord) -> String {
    match &r.user {
        Some(u) => format!("user:{u}"),
        None => format!("ip:{}", r.peer.ip()),
    }
}

/// Nearest-rank percentile `p` (0–100) of sorted values.
fn percentile(sorted: &[u64], p: u64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p as usize * sorted.len()).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

/// Accumulates the [`Figures`] (and failure reasons) of a set of
/// attempts.
#[derive(Default)]
struct Acc {
    attempts: u64,
    /// The modules seen, by [`CampaignBuilder`]'s number for each.
    modules: HashSet<u32>,
    outcomes: Outcomes,
    bytes_sent: u64,
    durations: Vec<u64>,
    failures: HashMap<(&'static str, String), u64>,
}

impl Acc {
    /// Counts `r`, made by the module numbered `module`.
    fn add(&mut self, r: &DownloadRecord, module: u32) {
        self.attempts = self.attempts.saturating_add(r.attempts());
        self.modules.insert(module);
        self.outcomes.add(r.outcome, r.attempts());
        // A hand-edited or corrupt log can hold any u64.
        self.bytes_sent = self.bytes_sent.saturating_add(r.bytes_sent);
        if r.outcome == Outcome::Complete {
            self.durations.push(r.duration_ms);
        } else if r.outcome != Outcome::HeadersOnly {
            // A HEAD or a 304 is no failure.
            let count = self
                .failures
                .entry((r.outcome.as_str(), r.reason.clone()))
                .or_default();
            *count = count.saturating_add(r.attempts());
        }
    }

    /// The figures and the [`TOP_FAILURES`] most frequent failure reasons.
    fn finish(mut self) -> (Figures, Vec<FailureReason>) {
        self.durations.sort_unstable();
        let mut failures: Vec<FailureReason> = self
            .failures
            .into_iter()
            .map(|((outcome, reason), count)| FailureReason {
                outcome,
                reason,
                count,
            })
            .collect();
        failures.sort_by(|a, b| b.count.cmp(&a.count).then(a.reason.cmp(&b.reason)));
        failures.truncate(TOP_FAILURES);
        let figures = Figures {
            attempts: self.attempts,
            modules: self.modules.len() as u64,
            outcomes: self.outcomes,
            bytes_sent: self.bytes_sent,
            p50_ms: percentile(&self.durations, 50),
            p95_ms: percentile(&self.durations, 95),
        };
        (figures, failures)
    }
}

/// Round bucket widths, seconds: the first that keeps a span within
/// [`MAX_BUCKETS`] buckets is used.
const BUCKET_WIDTHS: [u64; 14] = [
    1, 5, 10, 30, 60, 300, 600, 900, 1800, 3600, 10800, 21600, 43200, 86400,
];

/// The timeline of the records that started at `starts` (Unix seconds,
/// with the attempts each stands for and their outcome; any order) between
/// `first` and `last`.
fn timeline(starts: &[(i64, u32, Outcome)], first: DateTime<Utc>, last: DateTime<Utc>) -> Timeline {
    if starts.is_empty() {
        return Timeline {
            bucket_secs: BUCKET_WIDTHS[0],
            buckets: Vec::new(),
        };
    }
    let (first_s, last_s) = (first.timestamp(), last.timestamp());
    // Buckets of `width` aligned on multiples of it (round times): the
    // alignment can add one to what the span alone needs.
    let count = |width: u64| {
        let width = width as i64;
        (last_s.div_euclid(width) - first_s.div_euclid(width) + 1) as u64
    };
    let width = BUCKET_WIDTHS
        .iter()
        .copied()
        .find(|w| count(*w) <= MAX_BUCKETS as u64)
        // Longer than 47 days: widen by whole days.
        .unwrap_or_else(|| {
            let span = u64::try_from(last_s - first_s).unwrap_or(0) + 1;
            let mut days = span.div_ceil(MAX_BUCKETS as u64).div_ceil(86400);
            while count(days * 86400) > MAX_BUCKETS as u64 {
                days += 1;
            }
            days * 86400
        });
    let origin = first_s - first_s.rem_euclid(width as i64);
    let index = |secs: i64| ((secs - origin) / width as i64) as usize;
    let mut buckets: Vec<Bucket> = (0..=index(last_s))
        .map(|i| Bucket {
            start: DateTime::from_timestamp(origin + (i as i64) * width as i64, 0).unwrap_or(first),
            outcomes: Outcomes::default(),
        })
        .collect();
    for &(secs, n, outcome) in starts {
        if let Some(b) = buckets.get_mut(index(secs)) {
            b.outcomes.add(outcome, u64::from(n));
        }
    }
    Timeline {
        bucket_secs: width,
        buckets,
    }
}

impl Campaign {
    /// The campaign of the `records` that `filter` accepts, in any order,
    /// keeping the `recent` most recent attempts (a tie in `ts` keeps the
    /// input order). `generated` is now.
    pub fn build<'a>(
        records: impl IntoIterator<Item = &'a DownloadRecord>,
        filter: &Filter,
        recent: usize,
    ) -> Campaign {
        let mut builder = CampaignBuilder::new(filter.clone(), recent);
        for r in records {
            builder.add_ref(r);
        }
        builder.finish()
    }
}

/// A [`Campaign`] counted one record at a time, in any order, holding
/// per record only its start and outcome (for the timeline) and the
/// duration of a complete one (for the percentiles): `report` over logs of
/// millions of records reads them line by line through it instead of
/// holding them.
#[derive(Default)]
pub struct CampaignBuilder {
    filter: Filter,
    recent_cap: usize,
    per_package: BTreeMap<String, Acc>,
    per_instance: BTreeMap<Option<String>, Acc>,
    /// Every module seen ([`module_key`]) and its number: each figure
    /// keeps the numbers of its modules, not their names.
    modules: HashMap<String, u32>,
    outcomes: Outcomes,
    first: Option<DateTime<Utc>>,
    last: Option<DateTime<Utc>>,
    /// Attempts counted ([`DownloadRecord::attempts`] summed).
    attempts: u64,
    /// Per record its start (Unix seconds), the attempts it stands for
    /// and its outcome: the timeline's input, 16 bytes a record.
    starts: Vec<(i64, u32, Outcome)>,
    /// The newest `recent_cap` records so far, oldest on top.
    recent: BinaryHeap<Reverse<Newest>>,
    /// Records offered so far: orders ties in `ts` as the input did.
    seq: u64,
}

/// A record ordered by (`ts`, input position) for [`CampaignBuilder`]'s
/// most recent attempts.
struct Newest {
    key: (DateTime<Utc>, u64),
    record: DownloadRecord,
}

impl PartialEq for Newest {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}
impl Eq for Newest {}
impl PartialOrd for Newest {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Newest {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key.cmp(&other.key)
    }
}

impl CampaignBuilder {
    /// An empty campaign of the records `filter` accepts, keeping the
    /// `recent` most recent attempts.
    pub fn new(filter: Filter, recent: usize) -> Self {
        CampaignBuilder {
            filter,
            recent_cap: recent,
            ..Self::default()
        }
    }

    /// Counts `record` (when the filter accepts it).
    pub fn add(&mut self, record: DownloadRecord) {
        if self.count(&record) {
            self.offer_recent(record.ts, || record);
        }
    }

    /// Counts `record` (when the filter accepts it), cloning it only if it
    /// is among the most recent so far.
    pub fn add_ref(&mut self, record: &DownloadRecord) {
        if self.count(record) {
            self.offer_recent(record.ts, || record.clone());
        }
    }

    /// Adds `r` to every figure; false when the filter leaves it out.
    fn count(&mut self, r: &DownloadRecord) -> bool {
        self.seq += 1;
        if !self.filter.accepts(r) {
            return false;
        }
        let next = u32::try_from(self.modules.len()).unwrap_or(u32::MAX);
        let module = *self.modules.entry(module_key(r)).or_insert(next);
        match self.per_package.get_mut(r.path.as_str()) {
            Some(acc) => acc.add(r, module),
            None => (self.per_package.entry(r.path.clone()).or_default()).add(r, module),
        }
        match self.per_instance.get_mut(&r.instance) {
            Some(acc) => acc.add(r, module),
            None => (self.per_instance.entry(r.instance.clone()).or_default()).add(r, module),
        }
        self.outcomes.add(r.outcome, r.attempts());
        self.attempts = self.attempts.saturating_add(r.attempts());
        self.first = Some(self.first.map_or(r.ts, |t| t.min(r.ts)));
        self.last = Some(self.last.map_or(r.ts, |t| t.max(r.ts)));
        let n = u32::try_from(r.attempts()).unwrap_or(u32::MAX);
        self.starts.push((r.ts.timestamp(), n, r.outcome));
        true
    }

    /// Keeps the record `make` gives among the most recent when it is.
    fn offer_recent(&mut self, ts: DateTime<Utc>, make: impl FnOnce() -> DownloadRecord) {
        if self.recent_cap == 0 {
            return;
        }
        let key = (ts, self.seq);
        if self.recent.len() == self.recent_cap {
            match self.recent.peek() {
                Some(Reverse(oldest)) if oldest.key < key => {
                    self.recent.pop();
                }
                _ => return,
            }
        }
        self.recent.push(Reverse(Newest {
            key,
            record: make(),
        }));
    }

    /// The campaign of every record counted. `generated` is now.
    pub fn finish(self) -> Campaign {
        // A breakdown only when the records name more than one replica
        // (one replica's own view, older records without a name beside
        // it, needs none).
        let named = self.per_instance.keys().filter(|k| k.is_some()).count() > 1;
        let instances = self
            .per_instance
            .into_iter()
            .filter(|_| named)
            .map(|(instance, acc)| InstanceStats {
                instance: instance.unwrap_or_else(|| "-".to_string()),
                figures: acc.finish().0,
            })
            .collect();
        let mut packages: Vec<PackageStats> = self
            .per_package
            .into_iter()
            .map(|(path, acc)| {
                let (figures, top_failures) = acc.finish();
                PackageStats {
                    path,
                    figures,
                    top_failures,
                }
            })
            .collect();
        packages.sort_by(|a, b| {
            (b.figures.attempts)
                .cmp(&a.figures.attempts)
                .then(a.path.cmp(&b.path))
        });
        let timeline = match (self.first, self.last) {
            (Some(first), Some(last)) => timeline(&self.starts, first, last),
            _ => timeline(&[], Utc::now(), Utc::now()),
        };
        // Newest first.
        let recent = self
            .recent
            .into_sorted_vec()
            .into_iter()
            .map(|Reverse(n)| n.record)
            .collect();
        Campaign {
            generated: Utc::now(),
            first: self.first,
            last: self.last,
            attempts: self.attempts,
            modules: self.modules.len() as u64,
            outcomes: self.outcomes,
            packages,
            instances,
            recent,
            timeline,
            skipped_lines: 0,
            window: None,
        }
    }
}

/// Parses a package glob for [`Filter::package`] (`report --package`,
/// `/campaign?package=`) in the dialect of the fault rules' `path=`: `*`
/// and `?` stay inside one folder, `**` crosses folders (`Jun/*` is
/// `Jun/a.zip`, not `Jun/sub/b.zip`; `Jun/**` is both).
///
/// # Errors
/// The glob's syntax error (an unclosed `[`, say).
pub fn package_glob(glob: &str) -> Result<GlobMatcher, globset::Error> {
    let glob = globset::GlobBuilder::new(glob)
        .literal_separator(true)
        .build()?;
    Ok(glob.compile_matcher())
}

/// Parses a `--since`/`--until` value: RFC 3339 (`2026-06-01T12:00:00Z`)
/// or a span back from `now`: a number and a unit, `s`, `m`, `h`, `d`, `w`
/// (`90s`, `30m`, `2h`, `7d`).
///
/// # Errors
/// A message naming the value when it is neither.
pub fn parse_instant(s: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let bad = || {
        format!("expected RFC 3339 (2026-06-01T12:00:00Z) or a span like 30m, 2h, 7d; got {s:?}")
    };
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = s.split_at(split);
    let n: i64 = n.parse().map_err(|_| bad())?;
    let span = match unit {
        "s" => TimeDelta::try_seconds(n),
        "m" => TimeDelta::try_minutes(n),
        "h" => TimeDelta::try_hours(n),
        "d" => TimeDelta::try_days(n),
        "w" => TimeDelta::try_weeks(n),
        _ => None,
    }
    .ok_or_else(bad)?;
    now.checked_sub_signed(span).ok_or_else(bad)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::dlog::Protocol;

    /// A record at `secs` after 2026-06-01T12:00:00Z.
    pub(crate) fn rec(
        secs: i64,
        path: &str,
        peer: &str,
        user: Option<&str>,
        outcome: Outcome,
        duration_ms: u64,
        reason: &str,
    ) -> DownloadRecord {
        DownloadRecord {
            ts: DateTime::from_timestamp(1_780_315_200 + secs, 0).unwrap(),
            duration_ms,
            protocol: if user.is_some() {
                Protocol::Ftp
            } else {
                Protocol::Http
            },
            peer: peer.parse().unwrap(),
            user: user.map(str::to_string),
            path: path.into(),
            size: Some(1000),
            sha256: None,
            range_start: 0,
            bytes_sent: if outcome == Outcome::Complete {
                1000
            } else {
                100
            },
            bytes_acked: if outcome == Outcome::Complete {
                1000
            } else {
                50
            },
            status: 200,
            outcome,
            reason: reason.into(),
            fault: None,
            instance: None,
            more_refused: 0,
        }
    }

    pub(crate) fn sample() -> Vec<DownloadRecord> {
        use Outcome::*;
        vec![
            rec(0, "a.zip", "10.0.0.1:1", None, Complete, 100, "sent"),
            rec(5, "a.zip", "10.0.0.1:2", None, Aborted, 50, "client closed"),
            rec(9, "a.zip", "10.0.0.2:1", None, Aborted, 50, "client closed"),
            rec(10, "a.zip", "10.0.0.3:1", None, Complete, 300, "sent"),
            rec(20, "a.zip", "10.0.0.3:1", None, Refused, 1, "bad range"),
            rec(30, "b.zip", "10.0.0.9:1", Some("m1"), Complete, 200, "sent"),
            rec(
                31,
                "b.zip",
                "10.0.0.9:2",
                Some("m2"),
                AuthFailed,
                1,
                "bad login",
            ),
            rec(40, "nope.zip", "10.0.0.4:1", None, NotFound, 1, "no such"),
        ]
    }

    /// [`sample`] as served by two replicas: a.zip by `eu-1`, b.zip by
    /// `eu-2`, the last record by one without `--instance-id`.
    pub(crate) fn sample_of_replicas() -> Vec<DownloadRecord> {
        let mut records = sample();
        for r in &mut records {
            r.instance = match r.path.as_str() {
                "a.zip" => Some("eu-1".into()),
                "b.zip" => Some("eu-2".into()),
                _ => None,
            };
        }
        records
    }

    #[test]
    fn replicas_are_counted_apart_only_when_records_name_several() {
        let plain = Campaign::build(&sample(), &Filter::default(), DEFAULT_RECENT);
        assert!(plain.instances.is_empty());
        let mut one = sample();
        for r in &mut one {
            r.instance = Some("eu-1".into());
        }
        let single = Campaign::build(&one, &Filter::default(), DEFAULT_RECENT);
        assert!(single.instances.is_empty(), "one replica: no breakdown");
        one[0].instance = None;
        let older = Campaign::build(&one, &Filter::default(), DEFAULT_RECENT);
        assert!(
            older.instances.is_empty(),
            "one replica and unnamed records"
        );
        let c = Campaign::build(&sample_of_replicas(), &Filter::default(), DEFAULT_RECENT);
        let names: Vec<_> = c.instances.iter().map(|i| i.instance.as_str()).collect();
        assert_eq!(names, ["-", "eu-1", "eu-2"]);
        let eu1 = &c.instances[1];
        assert_eq!((eu1.figures.attempts, eu1.figures.modules), (5, 3));
        assert_eq!(
            eu1.figures.outcomes,
            Outcomes {
                complete: 2,
                aborted: 2,
                refused: 1,
                other: 0
            }
        );
        assert_eq!(eu1.figures.bytes_sent, 2300);
        assert_eq!(
            (eu1.figures.p50_ms, eu1.figures.p95_ms),
            (Some(100), Some(300))
        );
        let eu2 = &c.instances[2];
        assert_eq!(
            (
                eu2.figures.attempts,
                eu2.figures.outcomes.complete,
                eu2.figures.outcomes.other
            ),
            (2, 1, 1)
        );
        assert_eq!(c.instances[0].figures.attempts, 1, "the unnamed record");
        let total: u64 = c.instances.iter().map(|i| i.figures.attempts).sum();
        assert_eq!(total, c.attempts);
    }

    #[test]
    fn packages_count_attempts_modules_outcomes_bytes_and_percentiles() {
        let c = Campaign::build(&sample(), &Filter::default(), DEFAULT_RECENT);
        assert_eq!(c.attempts, 8);
        // 10.0.0.1, .2, .3, .4 by IP; m1, m2 by FTP user (same IP).
        assert_eq!(c.modules, 6);
        let a = &c.packages[0];
        assert_eq!(a.path, "a.zip");
        assert_eq!((a.figures.attempts, a.figures.modules), (5, 3));
        assert_eq!(
            a.figures.outcomes,
            Outcomes {
                complete: 2,
                aborted: 2,
                refused: 1,
                other: 0
            }
        );
        assert_eq!(a.figures.bytes_sent, 2000 + 300);
        assert_eq!((a.figures.p50_ms, a.figures.p95_ms), (Some(100), Some(300)));
        assert_eq!(a.top_failures[0].reason, "client closed");
        assert_eq!(a.top_failures[0].count, 2);
        assert_eq!(a.top_failures[1].outcome, "refused");
        let b = &c.packages[1];
        assert_eq!(
            (b.path.as_str(), b.figures.modules, b.figures.outcomes.other),
            ("b.zip", 2, 1)
        );
        let nope = &c.packages[2];
        assert_eq!((nope.figures.p50_ms, nope.figures.p95_ms), (None, None));
    }

    #[test]
    fn headers_only_answers_are_neither_failures_nor_download_times() {
        let mut records = sample();
        records.truncate(1);
        // A health check's HEAD, 0 ms.
        records.push(rec(
            1,
            "a.zip",
            "10.0.0.8:1",
            None,
            Outcome::HeadersOnly,
            0,
            "HEAD",
        ));
        let c = Campaign::build(&records, &Filter::default(), DEFAULT_RECENT);
        let a = &c.packages[0];
        assert_eq!(
            (a.figures.outcomes.complete, a.figures.outcomes.other),
            (1, 1)
        );
        assert_eq!(
            a.figures.p50_ms,
            Some(100),
            "the HEAD's 0 ms is no download time"
        );
        assert!(a.top_failures.is_empty(), "{:?}", a.top_failures);
    }

    #[test]
    fn recent_attempts_are_newest_first_and_bounded() {
        let c = Campaign::build(&sample(), &Filter::default(), 3);
        let paths: Vec<_> = c.recent.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(paths, ["nope.zip", "b.zip", "b.zip"]);
        assert_eq!(c.first.unwrap().timestamp(), 1_780_315_200);
        assert_eq!(c.last.unwrap().timestamp(), 1_780_315_240);
    }

    /// The same campaign whatever order the records come in (logs are read
    /// file by file, not merged by time).
    #[test]
    fn records_in_any_order_make_the_same_campaign() {
        let in_order = Campaign::build(&sample_of_replicas(), &Filter::default(), 3);
        let mut shuffled = sample_of_replicas();
        shuffled.reverse();
        shuffled.swap(1, 5);
        let mut builder = CampaignBuilder::new(Filter::default(), 3);
        for r in shuffled {
            builder.add(r);
        }
        let mut any_order = builder.finish();
        any_order.generated = in_order.generated;
        assert_eq!(any_order, in_order);
    }

    /// A `refused` record over a connection limit stands for itself and
    /// the refusals held back before it (`more_refused`).
    #[test]
    fn refusals_held_back_count_as_attempts() {
        use Outcome::*;
        let mut held = rec(3, "", "10.0.0.5:1", None, Refused, 0, "connection limit");
        held.more_refused = 4;
        let records = [
            rec(0, "a.zip", "10.0.0.1:1", None, Complete, 5, "sent"),
            held,
        ];
        let c = Campaign::build(&records, &Filter::default(), DEFAULT_RECENT);
        assert_eq!((c.attempts, c.outcomes.refused, c.modules), (6, 5, 2));
        let no_path = c.packages.iter().find(|p| p.path.is_empty()).unwrap();
        assert_eq!(no_path.figures.attempts, 5);
        assert_eq!(
            no_path.top_failures[0].count, 5,
            "the attempts, not the record"
        );
        let bucketed: u64 = c.timeline.buckets.iter().map(|b| b.outcomes.total()).sum();
        assert_eq!(bucketed, 6);
    }

    /// Attempts that started in the same millisecond are listed as they
    /// came in: the later one first among the most recent.
    #[test]
    fn recent_ties_keep_the_input_order() {
        use Outcome::*;
        let records = [
            rec(7, "first.zip", "10.0.0.1:1", None, Complete, 1, "sent"),
            rec(7, "second.zip", "10.0.0.2:1", None, Complete, 1, "sent"),
            rec(1, "older.zip", "10.0.0.3:1", None, Complete, 1, "sent"),
            rec(7, "third.zip", "10.0.0.4:1", None, Complete, 1, "sent"),
        ];
        let c = Campaign::build(&records, &Filter::default(), 2);
        let paths: Vec<_> = c.recent.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(paths, ["third.zip", "second.zip"]);
        let none = Campaign::build(&records, &Filter::default(), 0);
        assert!(none.recent.is_empty());
        assert_eq!(none.attempts, 4);
    }

    #[test]
    fn filter_applies_window_and_glob() {
        let records = sample();
        let t = |s: i64| DateTime::from_timestamp(1_780_315_200 + s, 0).unwrap();
        let filter = Filter {
            since: Some(t(5)),
            until: Some(t(30)),
            package: Some(package_glob("a.*").unwrap()),
        };
        let c = Campaign::build(&records, &filter, DEFAULT_RECENT);
        assert_eq!(c.attempts, 4);
        assert_eq!(c.packages.len(), 1);
        let empty = Campaign::build(&[], &Filter::default(), DEFAULT_RECENT);
        assert_eq!((empty.attempts, empty.packages.len()), (0, 0));
        assert!(empty.timeline.buckets.is_empty());
    }

    #[test]
    fn timeline_buckets_are_round_and_cover_every_attempt() {
        let c = Campaign::build(&sample(), &Filter::default(), DEFAULT_RECENT);
        // 41 s span: 1 s buckets would be 41 (≤ 48).
        assert_eq!(c.timeline.bucket_secs, 1);
        assert_eq!(c.timeline.buckets.len(), 41);
        let total: u64 = c.timeline.buckets.iter().map(|b| b.outcomes.total()).sum();
        assert_eq!(total, 8);
        let mut long = sample();
        long[7].ts += TimeDelta::hours(5);
        let c = Campaign::build(&long, &Filter::default(), DEFAULT_RECENT);
        // 5 h: 10 min buckets (31 of them).
        assert_eq!(c.timeline.bucket_secs, 600);
        assert!(c.timeline.buckets.len() <= MAX_BUCKETS);
        let total: u64 = c.timeline.buckets.iter().map(|b| b.outcomes.total()).sum();
        assert_eq!(total, 8);
        // A span that fits 48 buckets of 5 s only when not aligned
        // (00:00:04 to 00:04:03 touches 49 aligned ones): 10 s buckets.
        let mut two = sample();
        two.truncate(2);
        let base = DateTime::from_timestamp(1_780_315_200, 0).unwrap();
        two[0].ts = base + TimeDelta::seconds(4);
        two[1].ts = base + TimeDelta::seconds(243);
        let c = Campaign::build(&two, &Filter::default(), DEFAULT_RECENT);
        assert_eq!(c.timeline.bucket_secs, 10);
        assert!(c.timeline.buckets.len() <= MAX_BUCKETS);
        // Over many days too.
        two[1].ts = base + TimeDelta::days(400) + TimeDelta::seconds(3);
        let c = Campaign::build(&two, &Filter::default(), DEFAULT_RECENT);
        assert!(
            c.timeline.buckets.len() <= MAX_BUCKETS,
            "{}",
            c.timeline.buckets.len()
        );
        assert_eq!(c.timeline.bucket_secs % 86400, 0);
    }

    #[test]
    fn nearest_rank_percentiles() {
        assert_eq!(percentile(&[], 50), None);
        assert_eq!(percentile(&[7], 95), Some(7));
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50), Some(50));
        assert_eq!(percentile(&v, 95), Some(95));
    }

    #[test]
    fn instants_are_rfc3339_or_spans_back_from_now() {
        let now = DateTime::from_timestamp(1_780_315_200, 0).unwrap();
        assert_eq!(parse_instant("2h", now).unwrap(), now - TimeDelta::hours(2));
        assert_eq!(
            parse_instant("90s", now).unwrap(),
            now - TimeDelta::seconds(90)
        );
        assert_eq!(
            parse_instant("2026-06-01T10:00:00+02:00", now).unwrap(),
            DateTime::parse_from_rfc3339("2026-06-01T08:00:00Z").unwrap()
        );
        for bad in ["", "h", "2y", "yesterday", "99999999999999999999d"] {
            assert!(parse_instant(bad, now).is_err(), "{bad}");
        }
    }

    #[test]
    fn package_globs_keep_star_inside_a_folder_as_fault_rules_do() {
        let glob = |g| package_glob(g).unwrap();
        assert!(glob("Jun/*").is_match("Jun/a-v1.zip"));
        assert!(!glob("Jun/*").is_match("Jun/sub/b-v1.zip"));
        assert!(glob("Jun/**").is_match("Jun/sub/b-v1.zip"));
        assert!(!glob("*.zip").is_match("Jun/a-v1.zip"));
        assert!(glob("**/*.zip").is_match("Jun/a-v1.zip"));
        assert!(glob("**/*.zip").is_match("a.zip"));
        assert!(package_glob("Jun/[a").is_err());
    }
}
