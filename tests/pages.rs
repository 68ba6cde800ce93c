//! The pages people look at, in a real browser: the real binary serves the
//! sample packages with `--admin`; curl makes real downloads over HTTP and
//! FTP (complete, a 404, a refused login); headless Chromium then loads the
//! admin listener's live `/campaign` and the HTTP listener's package
//! listing, and the test reads the rendered DOM (`--dump-dom`, after the
//! pages' scripts ran). One screenshot per page (and a narrow one of the
//! listing) is kept in `target/screenshots/` for people to look at.

#[path = "support/chromium.rs"]
mod chromium;
mod common;
#[path = "support/served.rs"]
mod served;

use common::run;
use served::Served;

const PKG: &str = "update-v12-to-v13.zip";
const JUN_PKG: &str = "Jun/update-v12-to-v13.zip";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaign_and_listing_render_in_chromium() {
    let work = tempfile::tempdir().unwrap();
    let ready = work.path().join("ready.json");
    let log = work.path().join("downloads.jsonl");
    let ready_s = ready.to_string_lossy();
    let server = Served::samples(
        &log,
        "43000-43999",
        &["--admin", "127.0.0.1:0", "--ready-json", &ready_s],
    )
    .await;
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&ready).unwrap()).unwrap();
    let admin = info["listeners"]["admin"].as_str().unwrap().to_string();
    let http = server.base("http");
    let ftp = server.listeners["ftp"].clone();
    let out = work.path().join("got").to_string_lossy().into_owned();
    for url in [
        format!("{http}/{PKG}"),
        format!("ftp://test:test@{ftp}/{JUN_PKG}"),
        format!("{http}/nope-v1-to-v2.zip"),
        format!("ftp://test:wrong@{ftp}/{PKG}"),
    ] {
        run("curl", &["-s", "-o", &out, &url]).await;
    }
    // The records are in memory once /downloads has the fourth.
    let polled = run(
        "curl",
        &[
            "-sS",
            &format!("http://{admin}/downloads?since=3&timeout_ms=20000"),
        ],
    )
    .await;
    assert!(!polled.stdout.is_empty(), "{polled:?}");

    if chromium::available().await {
        let campaign = format!("http://{admin}/campaign");
        let dom = chromium::dom(&campaign).await;
        for row in [PKG, JUN_PKG, "nope-v1-to-v2.zip", "(no path)"] {
            assert!(
                dom.contains(&format!("<tr data-package=\"{row}\">")),
                "no row {row} in {dom}"
            );
        }
        assert_eq!(dom.matches("<tr data-outcome=").count(), 4, "{dom}");
        assert_eq!(
            dom.matches("<tr data-outcome=\"complete\"").count(),
            2,
            "{dom}"
        );
        assert!(dom.contains("<svg id=\"chart\""), "{dom}");
        assert!(dom.contains("<rect "), "{dom}");
        assert!(dom.contains("http-equiv=\"refresh\""), "{dom}");
        assert!(dom.contains("the last 4 of 4 attempts"), "{dom}");
        chromium::screenshot(&campaign, "campaign.png", "1200,1400").await;

        let listing = format!("{http}/");
        let dom = chromium::dom(&listing).await;
        // The inline script ran (copy buttons wired).
        assert!(dom.contains("data-copy-ready"), "{dom}");
        for (path, fits_ec200) in [(PKG, true), (JUN_PKG, false)] {
            assert!(
                dom.contains(&format!(
                    "<section class=\"pkg\" data-package=\"{path}\" data-valid=\"true\">"
                )),
                "{dom}"
            );
            for url in [
                format!("ftp://test:test@{ftp}/{path}"),
                format!("{http}/{path}"),
            ] {
                assert!(
                    dom.contains(&format!("AT+QFOTADL=\"{url}\"</code>")),
                    "no line for {url} in {dom}"
                );
            }
            let card = &dom[dom.find(&format!("data-package=\"{path}\"")).unwrap()..];
            let card = &card[..card.find("</section>").unwrap()];
            assert!(card.contains("data-fits=\"ec2x\""), "{card}");
            assert_eq!(card.contains("data-fits=\"ec200\""), fits_ec200, "{card}");
        }
        // ec200 takes FTP downloads from the root folder only: said why.
        assert!(dom.contains("<li data-misfit=\"ec200\">"), "{dom}");
        assert_eq!(dom.matches("data-copy=").count(), 4, "{dom}");
        chromium::screenshot(&listing, "listing.png", "1100,900").await;
        chromium::screenshot(&listing, "listing-narrow.png", "400,1400").await;
    }
    assert_eq!(server.stop().await, Some(0));
    // The browser's visits left no download records (no favicon request).
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.lines().count(), 4, "{text}");
}
