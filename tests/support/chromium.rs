//! Headless Chromium (Debian's `chromium`, installed by `scripts/test`)
//! for the tests of the pages people look at: the DOM after scripts ran
//! (`--dump-dom`) and screenshots kept in `target/screenshots/`. Started
//! with the flags this machine needs (no sandbox as root, no GPU, no
//! background networking to Google's hosts) and a fresh profile each time.

#![allow(dead_code)] // each test file uses part of it

use std::path::PathBuf;

use crate::common::run;

/// Whether `chromium` is on the PATH; when not, says so on stdout (the
/// test then skips its browser part — `scripts/test` installs it).
pub async fn available() -> bool {
    let found = run("sh", &["-c", "command -v chromium"])
        .await
        .status
        .success();
    if !found {
        println!("skipped: chromium is not installed (scripts/test installs it)");
    }
    found
}

/// Runs headless Chromium on `url` with `extra` arguments; its stdout.
pub async fn chromium(url: &str, extra: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let user_data = format!("--user-data-dir={}", profile.path().display());
    let mut args = vec![
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        &user_data,
    ];
    args.extend_from_slice(extra);
    args.push(url);
    let out = run("chromium", &args).await;
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The DOM of `url` once loaded and its scripts ran.
pub async fn dom(url: &str) -> String {
    chromium(url, &["--dump-dom"]).await
}

/// Where screenshots are kept: `target/screenshots/`.
pub fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Saves a screenshot of `url` as `target/screenshots/<name>` at `size`
/// (`"1200,1400"`) and checks it was written.
pub async fn screenshot(url: &str, name: &str, size: &str) {
    let shot = screenshots().join(name);
    let _ = std::fs::remove_file(&shot);
    chromium(
        url,
        &[
            &format!("--screenshot={}", shot.display()),
            &format!("--window-size={size}"),
        ],
    )
    .await;
    assert!(
        std::fs::metadata(&shot)
            .map(|m| m.len() > 0)
            .unwrap_or(false),
        "no screenshot {}",
        shot.display()
    );
}
