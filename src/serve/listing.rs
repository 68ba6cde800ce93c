//! The package listing page (`/` and folder paths on the HTTP listeners),
//! for the people who paste URLs into modules: per package the ready
//! `AT+QFOTADL="…"` line of each enabled protocol — the URL exactly as the
//! start-up banner prints it ([`Advertised::urls`]) — with a copy button,
//! the module families it fits (with their models) and why it does not fit
//! the others, its size, SHA-256 and validity with the reason.
//!
//! One self-contained page: inline CSS and a few lines of inline script
//! (the copy buttons: the Clipboard API, else a selected text range and
//! `document.execCommand("copy")`, which also works over plain HTTP where
//! browsers refuse the Clipboard API), no fonts or other external assets,
//! so it works offline and on a phone (cards stack, long lines wrap).
//! Every text from the file system (paths, problems) is escaped.

use std::fmt::Write as _;
use std::sync::Arc;

use crate::campaign::html::escape;
use crate::catalog::Package;
use crate::catalog::validate::Advertised;
use crate::profile::Profile;

const CSS: &str = "\
:root{color-scheme:light dark;--fg:#1b1b1b;--bg:#fff;--mute:#666;--line:#ddd;--card:#fafafa;--ok:#2e7d32;--bad:#c62828;--accent:#1565c0}
@media (prefers-color-scheme:dark){:root{--fg:#e8e8e8;--bg:#161616;--mute:#aaa;--line:#333;--card:#1e1e1e;--ok:#66bb6a;--bad:#ef5350;--accent:#64b5f6}}
*{box-sizing:border-box}
body{margin:0 auto;max-width:60rem;padding:1rem;font:15px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;color:var(--fg);background:var(--bg)}
h1{font-size:1.4rem;margin:.2rem 0}h2{font-size:1.05rem;margin:0 0 .4rem;word-break:break-all}
a{color:var(--accent)}.meta{color:var(--mute);font-size:.9rem}
.pkg{border:1px solid var(--line);border-radius:8px;padding:.8rem 1rem;margin:1rem 0;background:var(--card)}
.facts{display:flex;flex-wrap:wrap;gap:.3rem 1rem;margin:.2rem 0 .6rem;font-size:.92rem}
.ok{color:var(--ok);font-weight:600}.bad{color:var(--bad);font-weight:600}
code{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:.88em;word-break:break-all}
.cmd{display:flex;align-items:center;gap:.5rem;margin:.35rem 0;padding:.35rem .5rem;border:1px solid var(--line);border-radius:6px;background:var(--bg)}
.cmd .proto{flex:none;width:3.4rem;font-size:.75rem;font-weight:700;text-transform:uppercase;color:var(--mute)}
.cmd code{flex:1;min-width:0}
button{flex:none;font:inherit;font-size:.85rem;padding:.25rem .7rem;border:1px solid var(--accent);border-radius:5px;background:transparent;color:var(--accent);cursor:pointer}
button.done{background:var(--ok);border-color:var(--ok);color:#fff}
.fams{margin:.5rem 0 0;font-size:.92rem}.fam{display:inline-block;margin:.1rem .3rem .1rem 0;padding:0 .4rem;border-radius:4px;border:1px solid var(--ok)}
.fam small{color:var(--mute)}
details{margin-top:.4rem;font-size:.9rem}details li{word-break:break-word}
@media (max-width:40rem){body{padding:.6rem;font-size:14px}.cmd{flex-wrap:wrap}.cmd .proto{width:auto}.cmd code{flex-basis:100%}}
";

/// Copies the text of the element a button names (`data-copy`), with the
/// Clipboard API when the page is a secure context, else by selecting the
/// text and `execCommand("copy")`; the button says whether it worked. Marks
/// the page `data-copy-ready` once the handler is installed (the browser
/// test reads it).
const SCRIPT: &str = "\
function selectCopy(el){var r=document.createRange();r.selectNodeContents(el);var s=getSelection();s.removeAllRanges();s.addRange(r);var ok=false;try{ok=document.execCommand('copy')}catch(e){}return ok}
function said(b,ok){b.textContent=ok?'Copied':'Select + copy';b.classList.toggle('done',ok);setTimeout(function(){b.textContent='Copy';b.classList.remove('done')},2000)}
document.addEventListener('click',function(e){var b=e.target.closest('button[data-copy]');if(!b)return;var el=document.getElementById(b.dataset.copy);var text=el.textContent;
if(navigator.clipboard&&window.isSecureContext){navigator.clipboard.writeText(text).then(function(){said(b,true)},function(){said(b,selectCopy(el))})}else{said(b,selectCopy(el))}});
document.documentElement.setAttribute('data-copy-ready','');
";

/// The listing page of the packages under `folder` (`""`: every package),
/// with their URLs as `adv` advertises them; `allow_invalid` (the server's
/// `--allow-invalid`) makes invalid packages downloadable, so they get
/// links and `AT+QFOTADL` lines too.
pub fn render(
    packages: &[Arc<Package>],
    adv: &Advertised,
    folder: &str,
    allow_invalid: bool,
) -> String {
    let prefix = if folder.is_empty() {
        String::new()
    } else {
        format!("{folder}/")
    };
    let shown: Vec<&Package> = packages
        .iter()
        .map(Arc::as_ref)
        .filter(|p| p.path.starts_with(&prefix))
        .collect();
    let valid = shown.iter().filter(|p| p.is_valid()).count();
    let mut out = String::new();
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n");
    out.push_str("<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\n");
    // An empty icon: browsers would otherwise ask for /favicon.ico, a
    // not_found record in the download log for every visit.
    out.push_str("<link rel=\"icon\" href=\"data:,\">\n");
    let _ = writeln!(
        out,
        "<title>qfota-serve packages</title>\n<style>{CSS}</style></head><body>\n\
         <h1>Firmware packages in /{}</h1>\n<p class=\"meta\" id=\"summary\">{} packages, {valid} valid · \
         host {} · send a line on the module's AT port · <a href=\"/packages.json\">packages.json</a></p>",
        escape(folder),
        shown.len(),
        escape(&adv.host),
    );
    if shown.is_empty() {
        out.push_str("<p>No packages here.</p>\n");
    }
    for (i, p) in shown.iter().enumerate() {
        card(&mut out, i, p, adv, allow_invalid);
    }
    let _ = writeln!(out, "<script>{SCRIPT}</script></body></html>");
    out
}

/// One package's card.
fn card(out: &mut String, i: usize, p: &Package, adv: &Advertised, allow_invalid: bool) {
    let path = escape(&p.path);
    let served = p.is_valid() || allow_invalid;
    let _ = write!(
        out,
        "<section class=\"pkg\" data-package=\"{path}\" data-valid=\"{}\">\n<h2>",
        p.is_valid()
    );
    if served {
        let _ = write!(out, "<a href=\"/{path}\"><code>{path}</code></a>");
    } else {
        let _ = write!(out, "<code>{path}</code>");
    }
    out.push_str("</h2>\n<div class=\"facts\">");
    let _ = write!(
        out,
        "<span class=\"size\">{} bytes{}</span>",
        p.size,
        human_size(p.size)
    );
    if p.is_valid() {
        out.push_str("<span class=\"ok validity\">valid</span>");
    } else {
        let _ = write!(
            out,
            "<span class=\"bad validity\">invalid{}: {}</span>",
            if allow_invalid {
                " (served: --allow-invalid)"
            } else {
                ", not served"
            },
            escape(&p.problems.join("; "))
        );
    }
    let _ = writeln!(
        out,
        "<span>SHA-256 <code class=\"sha\">{}</code></span></div>",
        p.sha256
    );
    if served {
        for (n, url) in adv.urls(&p.path).iter().enumerate() {
            let proto = url.split("://").next().unwrap_or("");
            let id = format!("at-{i}-{n}");
            let _ = writeln!(
                out,
                "<div class=\"cmd\" data-protocol=\"{proto}\"><span class=\"proto\">{proto}</span>\
                 <code id=\"{id}\">AT+QFOTADL=&quot;{}&quot;</code>\
                 <button type=\"button\" data-copy=\"{id}\">Copy</button></div>",
                escape(url)
            );
        }
    }
    families(out, p);
    out.push_str("</section>\n");
}

/// The families the package fits (with their models), then the others
/// with the reasons, folded.
fn families(out: &mut String, p: &Package) {
    let models = |name: &str| {
        Profile::by_name(name)
            .map(|pr| pr.models.join(", "))
            .unwrap_or_default()
    };
    out.push_str("<div class=\"fams\">Fits: ");
    let fits: Vec<_> = p.profiles.iter().filter(|v| v.fits).collect();
    if fits.is_empty() {
        out.push_str("<span class=\"bad\">no module family</span>");
    }
    for v in &fits {
        let _ = write!(
            out,
            "<span class=\"fam\" data-fits=\"{0}\">{0} <small>{1}</small></span>",
            v.profile,
            models(v.profile)
        );
    }
    out.push_str("</div>\n");
    let misfits: Vec<_> = p.profiles.iter().filter(|v| !v.fits).collect();
    if misfits.is_empty() {
        return;
    }
    let names: Vec<&str> = misfits.iter().map(|v| v.profile).collect();
    let _ = write!(
        out,
        "<details><summary>Does not fit: {}</summary><ul>",
        names.join(", ")
    );
    for v in misfits {
        let _ = write!(
            out,
            "<li data-misfit=\"{0}\"><b>{0}</b> <small>({1})</small>: {2}</li>",
            v.profile,
            models(v.profile),
            escape(&v.problems.join("; "))
        );
    }
    out.push_str("</ul></details>\n");
}

/// ` (7.0 KiB)` for sizes of 1 KiB and more, else nothing.
fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = None;
    for u in UNITS {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = Some(u);
    }
    unit.map_or_else(String::new, |u| format!(" ({value:.1} {u})"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::validate::FtpCredentials;
    use std::io::Cursor;
    use std::time::SystemTime;

    fn adv() -> Advertised {
        Advertised {
            host: "192.0.2.2".into(),
            ftp: Some(2121),
            http: Some(8080),
            https: None,
            ftp_credentials: Some(FtpCredentials {
                user: "test".into(),
                password: "test".into(),
            }),
        }
    }

    fn package(path: &str, bytes: &[u8]) -> Arc<Package> {
        Arc::new(Package::validate(path, Cursor::new(bytes), SystemTime::now(), &adv()).unwrap())
    }

    #[test]
    fn a_valid_package_has_a_copyable_line_per_protocol_and_its_families() {
        let zip = crate::sim::package::tests::sample_zip();
        let page = render(
            &[package("Jun/update-v1-to-v2.zip", &zip)],
            &adv(),
            "",
            false,
        );
        assert!(page.contains(
            "<section class=\"pkg\" data-package=\"Jun/update-v1-to-v2.zip\" data-valid=\"true\">"
        ));
        assert!(page.contains(
            "<code id=\"at-0-0\">AT+QFOTADL=&quot;ftp://test:test@192.0.2.2:2121/Jun/update-v1-to-v2.zip&quot;</code>"
        ));
        assert!(page.contains("data-protocol=\"http\""));
        assert!(!page.contains("data-protocol=\"https\""));
        assert_eq!(
            page.matches("<button type=\"button\" data-copy=").count(),
            2
        );
        assert!(page.contains("data-fits=\"ec2x\""));
        // ec200 fetches over FTP from the root folder only.
        assert!(page.contains("<li data-misfit=\"ec200\">"));
        assert!(page.contains("root folder"));
        assert!(page.contains("href=\"/Jun/update-v1-to-v2.zip\""));
        // Self-contained: the only URLs are the packages' own.
        assert!(!page.contains("src="));
        assert_eq!(page.matches("<link").count(), 1);
        assert!(page.contains("<link rel=\"icon\" href=\"data:,\">"));
    }

    #[test]
    fn an_invalid_package_says_why_and_offers_no_line_and_names_are_escaped() {
        let page = render(&[package("<b>x.zip", b"not a zip")], &adv(), "", false);
        assert!(!page.contains("<b>x"));
        assert!(page.contains("&lt;b&gt;x.zip"));
        assert!(page.contains("data-valid=\"false\""));
        assert!(page.contains("invalid, not served: "));
        assert!(!page.contains("AT+QFOTADL"));
        assert!(!page.contains("href=\"/&lt;b"));
        let served = render(&[package("bad.zip", b"not a zip")], &adv(), "", true);
        assert!(served.contains("(served: --allow-invalid)"));
        assert!(served.contains("AT+QFOTADL"));
    }

    #[test]
    fn a_folder_lists_only_its_packages_and_sizes_read_well() {
        let zip = crate::sim::package::tests::sample_zip();
        let all = [
            package("a-v1-to-v2.zip", &zip),
            package("Jun/b-v1-to-v2.zip", &zip),
        ];
        let page = render(&all, &adv(), "Jun", false);
        assert!(page.contains("Firmware packages in /Jun"));
        assert!(!page.contains("data-package=\"a-v1-to-v2.zip\""));
        assert_eq!(human_size(1000), "");
        assert_eq!(human_size(7188), " (7.0 KiB)");
        assert_eq!(human_size(3 << 20), " (3.0 MiB)");
    }
}
