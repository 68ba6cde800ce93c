//! The campaign as one self-contained HTML page: inline CSS, an inline SVG
//! chart of attempts and outcomes over time drawn here (server-side), no
//! scripts, fonts or other external assets — it works offline, from a file
//! (`report --html`) or from the admin listener (a live page that reloads
//! itself), and on narrow screens (tables scroll sideways, the chart
//! scales).
//!
//! Every text from the log (paths, reasons, user names) is escaped.

use std::fmt::Write as _;
use std::time::Duration;

use super::text::{PACKAGE_COLUMNS, bytes, duration, figure_cells, module_label};
use super::{Campaign, Figures, Outcomes, Timeline, path_label};
use crate::dlog::format_ts;

/// Colours of the outcome classes, chart and legend alike.
const SERIES: [(&str, &str); 4] = [
    ("complete", "#2e7d32"),
    ("aborted", "#ef6c00"),
    ("refused", "#c62828"),
    ("other", "#6d6d6d"),
];

const CSS: &str = "\
:root{color-scheme:light dark;--fg:#1b1b1b;--bg:#fff;--mute:#666;--line:#ddd;--head:#f3f3f3}
@media (prefers-color-scheme:dark){:root{--fg:#e8e8e8;--bg:#161616;--mute:#aaa;--line:#333;--head:#222}}
*{box-sizing:border-box}
body{margin:0 auto;max-width:72rem;padding:1rem;font:15px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;color:var(--fg);background:var(--bg)}
h1{font-size:1.4rem;margin:.2rem 0}h2{font-size:1.1rem;margin:1.6rem 0 .5rem}
.meta{color:var(--mute);font-size:.9rem}
.cards{display:flex;flex-wrap:wrap;gap:.6rem;margin:1rem 0}
.card{border:1px solid var(--line);border-radius:8px;padding:.5rem .8rem;min-width:7.5rem}
.card b{display:block;font-size:1.3rem}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{padding:.35rem .5rem;border-bottom:1px solid var(--line);text-align:right;white-space:nowrap;vertical-align:top}
th{background:var(--head);font-weight:600}
td.l,th.l{text-align:left}td.reasons{white-space:normal;min-width:14rem;text-align:left}
.reasons ul{margin:0;padding-left:1rem}.n{color:var(--mute)}
code{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:.9em;word-break:break-all}
.o-complete{color:#2e7d32}.o-aborted{color:#ef6c00}.o-refused{color:#c62828}
svg{width:100%;height:auto;max-height:16rem}svg text{fill:var(--mute);font-size:11px}
.legend{display:flex;flex-wrap:wrap;gap:.8rem;font-size:.85rem}
.legend i{display:inline-block;width:.8rem;height:.8rem;border-radius:2px;margin-right:.3rem;vertical-align:-1px}
@media (max-width:40rem){body{padding:.6rem;font-size:14px}.card{min-width:6rem}}
";

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The page for `campaign`. With `refresh`, the page reloads itself that
/// often (a `<meta http-equiv="refresh">`, no script): the live view of the
/// admin listener; `None` for a static report.
pub fn render(campaign: &Campaign, refresh: Option<Duration>) -> String {
    let c = campaign;
    let mut out = String::new();
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n");
    out.push_str("<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\n");
    if let Some(every) = refresh {
        let _ = writeln!(
            out,
            "<meta http-equiv=\"refresh\" content=\"{}\">",
            every.as_secs().max(1)
        );
    }
    let _ = writeln!(
        out,
        "<title>qfota-serve campaign</title>\n<style>{CSS}</style></head><body>"
    );
    out.push_str("<h1>FOTA campaign</h1>\n<p class=\"meta\">");
    match (c.first, c.last) {
        (Some(f), Some(l)) => {
            let _ = write!(out, "attempts from {} to {}", format_ts(&f), format_ts(&l));
        }
        _ => out.push_str("no attempts yet"),
    }
    let _ = write!(out, " · generated {}", format_ts(&c.generated));
    if c.skipped_lines > 0 {
        let _ = write!(
            out,
            " · skipped {} log lines that were not records",
            c.skipped_lines
        );
    }
    if let Some(w) = c.window {
        let _ = write!(
            out,
            " · <span id=\"window\">live: the last {} of {} attempts since the server started \
             (the whole log: <code>qfota-serve report</code>)</span>",
            w.kept, w.total
        );
    }
    if let Some(every) = refresh {
        let _ = write!(out, " · refreshes every {} s", every.as_secs().max(1));
    }
    out.push_str("</p>\n");
    cards(&mut out, c);
    out.push_str("<h2>Attempts over time</h2>\n");
    chart(&mut out, &c.timeline);
    packages(&mut out, c);
    instances(&mut out, c);
    recent(&mut out, c);
    out.push_str("</body></html>\n");
    out
}

fn cards(out: &mut String, c: &Campaign) {
    out.push_str("<div class=\"cards\" id=\"summary\">");
    let o = &c.outcomes;
    for (label, n) in [
        ("attempts", c.attempts),
        ("modules", c.modules),
        ("complete", o.complete),
        ("aborted", o.aborted),
        ("refused", o.refused),
        ("other", o.other),
    ] {
        let _ = write!(
            out,
            "<div class=\"card\" data-count=\"{label}\"><b>{n}</b>{label}</div>"
        );
    }
    out.push_str("</div>\n");
}

/// A stacked bar per time bucket, outcome classes bottom-up in
/// [`SERIES`] order, with the peak count and the first/last bucket times
/// as labels.
fn chart(out: &mut String, t: &Timeline) {
    const W: f64 = 720.0;
    const H: f64 = 200.0;
    const TOP: f64 = 14.0;
    const BOTTOM: f64 = 22.0;
    let peak = t
        .buckets
        .iter()
        .map(|b| b.outcomes.total())
        .max()
        .unwrap_or(0);
    let _ = writeln!(
        out,
        "<figure class=\"scroll\" style=\"margin:0\"><svg id=\"chart\" viewBox=\"0 0 {W} {H}\" role=\"img\" \
         aria-label=\"attempts per {} s by outcome\" xmlns=\"http://www.w3.org/2000/svg\">",
        t.bucket_secs
    );
    let plot_h = H - TOP - BOTTOM;
    let _ = writeln!(
        out,
        "<line x1=\"0\" y1=\"{y}\" x2=\"{W}\" y2=\"{y}\" stroke=\"#888\" stroke-width=\"1\"/>",
        y = H - BOTTOM
    );
    if peak > 0 {
        let n = t.buckets.len() as f64;
        let slot = W / n;
        let bar = (slot * 0.8).max(1.0);
        for (i, b) in t.buckets.iter().enumerate() {
            let x = i as f64 * slot + (slot - bar) / 2.0;
            let mut y = H - BOTTOM;
            for ((name, colour), count) in SERIES.iter().zip(counts(&b.outcomes)) {
                if count == 0 {
                    continue;
                }
                let h = plot_h * count as f64 / peak as f64;
                y -= h;
                let _ = writeln!(
                    out,
                    "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{bar:.1}\" height=\"{h:.1}\" fill=\"{colour}\">\
                     <title>{} {name}: {count}</title></rect>",
                    format_ts(&b.start)
                );
            }
        }
        let first = t.buckets.first().map(|b| format_ts(&b.start));
        let last = t.buckets.last().map(|b| format_ts(&b.start));
        let _ = writeln!(
            out,
            "<text x=\"2\" y=\"11\">{peak} per {} s</text>\
             <text x=\"2\" y=\"{H}\" dy=\"-6\">{}</text>\
             <text x=\"{W}\" y=\"{H}\" dy=\"-6\" text-anchor=\"end\">{}</text>",
            t.bucket_secs,
            first.unwrap_or_default(),
            last.unwrap_or_default()
        );
    } else {
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">no attempts</text>",
            W / 2.0,
            H / 2.0
        );
    }
    out.push_str("</svg></figure>\n<div class=\"legend\">");
    for (name, colour) in SERIES {
        let _ = write!(
            out,
            "<span><i style=\"background:{colour}\"></i>{name}</span>"
        );
    }
    out.push_str("</div>\n");
}

fn counts(o: &Outcomes) -> [u64; 4] {
    [o.complete, o.aborted, o.refused, o.other]
}

/// Opens a table of [`Figures`] rows: its heading, the name column and
/// the [`PACKAGE_COLUMNS`] (the header row is left open for more).
fn figures_table(out: &mut String, heading: &str, id: &str, name: &str) {
    let _ = write!(
        out,
        "<h2>{heading}</h2>\n<div class=\"scroll\"><table id=\"{id}\"><thead><tr>\
         <th class=\"l\">{name}</th>"
    );
    for column in PACKAGE_COLUMNS {
        let _ = write!(out, "<th>{column}</th>");
    }
}

/// A row's name cell (`data-{key}` on the row) and its figure cells; the
/// row is left open for more.
fn figures_row(out: &mut String, key: &str, name: &str, figures: &Figures) {
    let name = escape(name);
    let _ = write!(
        out,
        "<tr data-{key}=\"{name}\"><td class=\"l\"><code>{name}</code></td>"
    );
    for (cell, column) in figure_cells(figures).iter().zip(PACKAGE_COLUMNS) {
        let _ = write!(out, "<td class=\"o-{column}\">{cell}</td>");
    }
}

fn packages(out: &mut String, c: &Campaign) {
    figures_table(out, "Packages", "packages", "package");
    out.push_str("<th class=\"l\">top failure reasons</th></tr></thead><tbody>\n");
    if c.packages.is_empty() {
        out.push_str("<tr><td class=\"l\" colspan=\"11\">no attempts</td></tr>\n");
    }
    for p in &c.packages {
        figures_row(out, "package", path_label(&p.path), &p.figures);
        out.push_str("<td class=\"reasons\">");
        if p.top_failures.is_empty() {
            out.push_str("<span class=\"n\">none</span>");
        } else {
            out.push_str("<ul>");
            for f in &p.top_failures {
                let _ = write!(
                    out,
                    "<li><b>{}×</b> {}: {}</li>",
                    f.count,
                    f.outcome,
                    escape(&f.reason)
                );
            }
            out.push_str("</ul>");
        }
        out.push_str("</td></tr>\n");
    }
    out.push_str("</tbody></table></div>\n");
}

/// One row per replica, when the records name several (`--instance-id`).
fn instances(out: &mut String, c: &Campaign) {
    if c.instances.is_empty() {
        return;
    }
    figures_table(out, "Replicas", "instances", "replica");
    out.push_str("</tr></thead><tbody>\n");
    for i in &c.instances {
        figures_row(out, "instance", &i.instance, &i.figures);
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody></table></div>\n");
}

fn recent(out: &mut String, c: &Campaign) {
    out.push_str(
        "<h2>Most recent attempts</h2>\n<div class=\"scroll\"><table id=\"recent\"><thead><tr>\
         <th class=\"l\">time</th><th class=\"l\">protocol</th><th class=\"l\">module</th>\
         <th class=\"l\">package</th><th class=\"l\">outcome</th><th>status</th><th>bytes</th>\
         <th>duration</th><th class=\"l\">reason</th></tr></thead><tbody>\n",
    );
    for r in &c.recent {
        let _ = writeln!(
            out,
            "<tr data-outcome=\"{outcome}\"><td class=\"l\">{}</td><td class=\"l\">{}</td><td class=\"l\">{}</td>\
             <td class=\"l\"><code>{}</code></td><td class=\"l o-{outcome}\">{outcome}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td class=\"reasons\">{}</td></tr>",
            format_ts(&r.ts),
            r.protocol.as_str(),
            escape(&module_label(r)),
            escape(path_label(&r.path)),
            r.status,
            bytes(r.bytes_sent),
            duration(Some(r.duration_ms)),
            escape(&r.reason),
            outcome = r.outcome.as_str(),
        );
    }
    out.push_str("</tbody></table></div>\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::campaign::tests::{rec, sample, sample_of_replicas};
    use crate::campaign::{DEFAULT_RECENT, Filter};
    use crate::dlog::Outcome;

    #[test]
    fn page_is_self_contained_with_rows_chart_and_optional_refresh() {
        let c = Campaign::build(&sample(), &Filter::default(), DEFAULT_RECENT);
        let page = render(&c, None);
        assert!(page.contains("<tr data-package=\"a.zip\">"));
        assert_eq!(page.matches("<tr data-package=").count(), 3);
        assert_eq!(page.matches("<tr data-outcome=").count(), 8);
        assert!(page.contains("<svg id=\"chart\""));
        assert!(page.contains("<rect "));
        assert!(!page.contains("http-equiv=\"refresh\""));
        // No external assets: the only URL is the SVG namespace.
        assert!(!page.contains("src="));
        assert!(!page.contains("href="));
        assert_eq!(page.matches("://").count(), 1);
        let live = render(&c, Some(Duration::from_secs(5)));
        assert!(live.contains("<meta http-equiv=\"refresh\" content=\"5\">"));
    }

    #[test]
    fn replicas_get_a_table_when_records_name_them() {
        let plain = render(
            &Campaign::build(&sample(), &Filter::default(), DEFAULT_RECENT),
            None,
        );
        assert!(!plain.contains("id=\"instances\""));
        let c = Campaign::build(&sample_of_replicas(), &Filter::default(), DEFAULT_RECENT);
        let page = render(&c, None);
        assert!(page.contains("<h2>Replicas</h2>"), "{page}");
        for name in ["eu-1", "eu-2", "-"] {
            assert!(
                page.contains(&format!("data-instance=\"{name}\"")),
                "{name}"
            );
        }
        let row = &page[page.find("data-instance=\"eu-1\"").unwrap()..];
        assert!(row.starts_with("data-instance=\"eu-1\"><td class=\"l\"><code>eu-1</code></td><td class=\"o-attempts\">5</td>"), "{row}");
    }

    #[test]
    fn log_text_is_escaped() {
        let evil = rec(
            0,
            "<script>x</script>.zip",
            "10.0.0.1:1",
            Some("a\"b"),
            Outcome::NotFound,
            1,
            "<img src=x>",
        );
        let c = Campaign::build([&evil], &Filter::default(), DEFAULT_RECENT);
        let page = render(&c, None);
        assert!(!page.contains("<script>"));
        assert!(!page.contains("<img"));
        assert!(page.contains("&lt;script&gt;x&lt;/script&gt;.zip"));
        assert!(page.contains("a&quot;b"));
    }

    #[test]
    fn an_empty_campaign_renders() {
        let c = Campaign::build(&[], &Filter::default(), DEFAULT_RECENT);
        let page = render(&c, None);
        assert!(page.contains("no attempts yet"));
        assert!(!page.contains("<rect "));
    }
}
