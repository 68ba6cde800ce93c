//! The campaign as a terminal table: a summary line, one row per package
//! (attempts, modules, outcomes, bytes, p50/p95), its top failure reasons
//! under it, one row per replica when the records name several, then the most
//! recent attempts.

use std::fmt::Write as _;

use super::{Campaign, Figures, path_label};
use crate::dlog::DownloadRecord;
use crate::dlog::format_ts;

/// Milliseconds as `850 ms` / `12.3 s`, `-` when absent.
pub fn duration(ms: Option<u64>) -> String {
    match ms {
        None => "-".into(),
        Some(ms) if ms < 1000 => format!("{ms} ms"),
        Some(ms) => format!("{:.1} s", ms as f64 / 1000.0),
    }
}

/// Bytes in binary units (`7188 B`, `1.5 MiB`).
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// Column titles of a row after its name, in [`figure_cells`] order.
pub const PACKAGE_COLUMNS: [&str; 9] = [
    "attempts", "modules", "complete", "aborted", "refused", "other", "bytes", "p50", "p95",
];

/// A row's cells after its name (a package's path, a replica's name), in
/// [`PACKAGE_COLUMNS`] order: attempts, modules, the four outcome
/// classes, bytes sent, p50 and p95 duration.
pub fn figure_cells(f: &Figures) -> [String; 9] {
    let o = &f.outcomes;
    [
        f.attempts.to_string(),
        f.modules.to_string(),
        o.complete.to_string(),
        o.aborted.to_string(),
        o.refused.to_string(),
        o.other.to_string(),
        bytes(f.bytes_sent),
        duration(f.p50_ms),
        duration(f.p95_ms),
    ]
}

/// Who made an attempt: `user@ip` over FTP, the IP otherwise.
pub fn module_label(r: &DownloadRecord) -> String {
    match &r.user {
        Some(u) => format!("{u}@{}", r.peer.ip()),
        None => r.peer.ip().to_string(),
    }
}

/// Columns a name takes on a terminal once its control characters are
/// escaped ([`escape_controls`]): a wide character (CJK) takes two, a
/// combining one none.
fn columns(name: &str) -> usize {
    unicode_width::UnicodeWidthStr::width(escape_controls(name).as_str())
}

/// Right-aligns `cells` in the table's column widths, after `name`
/// (a package path or replica, escaped and padded to `name_w` columns).
fn row(name: &str, name_w: usize, cells: &[String]) -> String {
    const WIDTHS: [usize; 9] = [8, 7, 8, 7, 7, 5, 10, 8, 8];
    let mut line = escape_controls(name);
    line.push_str(&" ".repeat(name_w.saturating_sub(columns(name)) + 1));
    for (cell, w) in cells.iter().zip(WIDTHS) {
        let _ = write!(line, " {cell:>w$}");
    }
    line
}

/// The whole table, ending with a newline.
pub fn render(c: &Campaign) -> String {
    let mut out = String::new();
    let window = match (c.first, c.last) {
        (Some(f), Some(l)) => format!(" from {} to {}", format_ts(&f), format_ts(&l)),
        _ => String::new(),
    };
    let _ = writeln!(
        out,
        "{} attempts by {} modules{window}: {} complete, {} aborted, {} refused, {} other",
        c.attempts,
        c.modules,
        c.outcomes.complete,
        c.outcomes.aborted,
        c.outcomes.refused,
        c.outcomes.other
    );
    if c.packages.is_empty() {
        out.push_str("no attempts\n");
        return out;
    }
    let path_w = c
        .packages
        .iter()
        .map(|p| columns(path_label(&p.path)))
        .max()
        .unwrap_or(0)
        .max("package".len());
    let titles = PACKAGE_COLUMNS.map(str::to_string);
    let _ = writeln!(out, "\n{}", row("package", path_w, &titles));
    for p in &c.packages {
        let _ = writeln!(
            out,
            "{}",
            row(path_label(&p.path), path_w, &figure_cells(&p.figures))
        );
        for f in &p.top_failures {
            let _ = writeln!(out, "    {:>4}× {}: {}", f.count, f.outcome, f.reason);
        }
    }
    if !c.instances.is_empty() {
        let name_w = c
            .instances
            .iter()
            .map(|i| columns(&i.instance))
            .max()
            .unwrap_or(0)
            .max("replica".len());
        let _ = writeln!(out, "\n{}", row("replica", name_w, &titles));
        for i in &c.instances {
            let _ = writeln!(
                out,
                "{}",
                row(&i.instance, name_w, &figure_cells(&i.figures))
            );
        }
    }
    if !c.recent.is_empty() {
        let _ = writeln!(out, "\nmost recent attempts");
        for r in &c.recent {
            let _ = writeln!(
                out,
                "  {}  {:<5} {:<15} {:<8} {:>10} {:>8}  {}  {}",
                format_ts(&r.ts),
                r.protocol.as_str(),
                r.outcome.as_str(),
                r.status,
                bytes(r.bytes_sent),
                duration(Some(r.duration_ms)),
                path_label(&r.path),
                module_label(r)
            );
        }
    }
    escape_controls(&out)
}

/// `text` with every control character but the line end written as
/// `\u{…}`: paths, user names and reasons come from clients, and an
/// escape sequence must not reach the operator's terminal as one.
fn escape_controls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() && c != '\n' {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::campaign::tests::{sample, sample_of_replicas};
    use crate::campaign::{DEFAULT_RECENT, Filter};

    #[test]
    fn table_has_a_row_per_package_and_its_failures() {
        let c = Campaign::build(&sample(), &Filter::default(), DEFAULT_RECENT);
        let t = render(&c);
        assert!(
            t.starts_with("8 attempts by 6 modules from 2026-06-01T12:00:00.000Z"),
            "{t}"
        );
        let row = t.lines().find(|l| l.starts_with("a.zip")).unwrap();
        let cols: Vec<_> = row.split_whitespace().collect();
        assert_eq!(&cols[..7], ["a.zip", "5", "3", "2", "2", "1", "0"], "{row}");
        assert!(t.contains("   2× aborted: client closed"), "{t}");
        assert!(t.contains("most recent attempts"), "{t}");
    }

    #[test]
    fn replicas_get_rows_of_their_own_when_named() {
        let plain = render(&Campaign::build(
            &sample(),
            &Filter::default(),
            DEFAULT_RECENT,
        ));
        assert!(!plain.contains("replica"), "{plain}");
        let c = Campaign::build(&sample_of_replicas(), &Filter::default(), DEFAULT_RECENT);
        let t = render(&c);
        assert!(t.lines().any(|l| l.starts_with("replica ")), "{t}");
        let row = t.lines().find(|l| l.starts_with("eu-1")).unwrap();
        let cols: Vec<_> = row.split_whitespace().collect();
        assert_eq!(&cols[..7], ["eu-1", "5", "3", "2", "2", "1", "0"], "{row}");
        assert!(t.lines().any(|l| l.starts_with("eu-2 ")), "{t}");
    }

    #[test]
    fn client_text_cannot_drive_the_terminal() {
        use crate::campaign::tests::rec;
        use crate::dlog::Outcome;
        let hostile = "x\u{1b}[2J\u{1b}[31mred.zip";
        let mut records = vec![rec(
            0,
            hostile,
            "10.0.0.1:1",
            Some("u\u{7}"),
            Outcome::Aborted,
            1,
            "bye\r",
        )];
        // Sums past u64::MAX saturate instead of overflowing.
        records.push(records[0].clone());
        for r in &mut records {
            r.bytes_sent = u64::MAX;
        }
        let t = render(&Campaign::build(
            &records,
            &Filter::default(),
            DEFAULT_RECENT,
        ));
        assert!(!t.chars().any(|c| c.is_control() && c != '\n'), "{t:?}");
        assert!(t.contains("x\\u{1b}[2J\\u{1b}[31mred.zip"), "{t}");
        assert!(t.contains("u\\u{7}@10.0.0.1"), "{t}");
    }

    /// Rows line up on a terminal whatever the paths hold: accented and
    /// wide (CJK) characters, and control characters, which are escaped
    /// before the column is measured.
    #[test]
    fn columns_line_up_for_any_path() {
        use crate::campaign::tests::rec;
        use crate::dlog::Outcome;
        let paths = ["a.zip", "éééééééééé.zip", "固件包.zip", "x\u{1b}[2Jy.zip"];
        let records: Vec<_> = (0..)
            .zip(paths)
            .map(|(i, p)| rec(i, p, "10.0.0.1:1", None, Outcome::Complete, 5, "sent"))
            .collect();
        let t = render(&Campaign::build(&records, &Filter::default(), 0));
        let table: Vec<&str> = t
            .lines()
            .skip_while(|l| !l.starts_with("package "))
            .take(1 + paths.len())
            .collect();
        assert_eq!(table.len(), 1 + paths.len(), "{t}");
        let width = |l: &str| unicode_width::UnicodeWidthStr::width(l);
        for line in &table[1..] {
            assert_eq!(width(line), width(table[0]), "{t}");
        }
    }

    #[test]
    fn units_read_well() {
        assert_eq!(bytes(7188), "7.0 KiB");
        assert_eq!(bytes(12), "12 B");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
        assert_eq!(duration(Some(850)), "850 ms");
        assert_eq!(duration(Some(12_345)), "12.3 s");
        assert_eq!(duration(None), "-");
    }
}
