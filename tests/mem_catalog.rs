//! The front-ends need nothing but the `Catalog` trait: a real server over
//! a `MemCatalog` (no package folder at all) lists, sizes and serves
//! packages over FTP and HTTP to real clients (curl), with `REST`/`Range`,
//! and logs the same records as over a folder.

mod common;

use std::sync::Arc;

use common::{DEADLINE, noise, run, sha256, zip_with};
use qfota_serve::catalog::validate::Advertised;
use qfota_serve::catalog::{Catalog, MemCatalog};
use qfota_serve::dlog::{Outcome, Protocol};
use qfota_serve::serve::Server;

const ROOT_PKG: &str = "update-v12-to-v13.zip";
const JUN_PKG: &str = "Jun/fw-v1-to-v2.zip";
const BROKEN: &str = "broken-v1-to-v2.zip";

/// A catalog with two valid packages (one in a folder) and a broken one,
/// and a server over it with FTP (`test:test`) and HTTP on port 0.
async fn serve_from_memory() -> (Server, Arc<MemCatalog>) {
    let catalog = Arc::new(MemCatalog::new(Advertised::default()));
    let root = catalog
        .insert(ROOT_PKG, zip_with(&[("system.diff", &noise(5000, 7))]))
        .unwrap();
    assert!(root.is_valid(), "{:?}", root.problems);
    catalog
        .insert(JUN_PKG, zip_with(&[("boot.diff", b"jun")]))
        .unwrap();
    let broken = catalog.insert(BROKEN, b"not a zip".to_vec()).unwrap();
    assert!(!broken.is_valid());
    let server = Server::builder()
        // Never read: the catalog replaces the folder.
        .packages("/nonexistent/qfota-serve-packages")
        .catalog(Arc::clone(&catalog) as Arc<dyn Catalog>)
        .ftp(0)
        .http(0)
        .user("test", "test")
        .passive_ports(40000..=40999)
        .start()
        .await
        .expect("server over a MemCatalog starts");
    (server, catalog)
}

async fn curl(args: &[&str]) -> Vec<u8> {
    let out = run("curl", &[&["-sS", "--max-time", "20"], args].concat()).await;
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ftp_lists_sizes_and_serves_packages_held_in_memory() {
    let (server, catalog) = serve_from_memory().await;
    assert_eq!(server.catalog().location(), "memory");
    let base = server.ftp_url("").unwrap();

    let list = String::from_utf8(curl(&[&base]).await).unwrap();
    assert!(
        list.lines()
            .any(|l| l.starts_with('d') && l.ends_with(" Jun")),
        "{list}"
    );
    assert!(list.lines().any(|l| l.ends_with(ROOT_PKG)), "{list}");
    assert!(
        !list.contains(BROKEN),
        "invalid packages are not listed: {list}"
    );
    let nlst = String::from_utf8(curl(&["-l", &format!("{base}Jun/")]).await).unwrap();
    assert_eq!(nlst.lines().collect::<Vec<_>>(), ["fw-v1-to-v2.zip"]);

    let url = server.ftp_url(JUN_PKG).unwrap();
    let want = zip_with(&[("boot.diff", b"jun")]);
    let head = String::from_utf8(curl(&["-I", &url]).await).unwrap();
    assert!(
        head.contains(&format!("Content-Length: {}", want.len())),
        "{head}"
    );
    assert_eq!(sha256(&curl(&[&url]).await), sha256(&want));
    // REST 10: the rest of the package from byte 10.
    assert_eq!(curl(&["-r", "10-", &url]).await, want[10..]);

    let rec = server
        .wait_download(DEADLINE, |r| {
            r.protocol == Protocol::Ftp && r.range_start == 10 && r.outcome == Outcome::Complete
        })
        .await
        .expect("a complete FTP record for the REST download");
    assert_eq!(rec.path, JUN_PKG);
    assert_eq!(rec.user.as_deref(), Some("test"));
    assert_eq!(rec.status, 226);
    assert_eq!(rec.bytes_sent, want.len() as u64 - 10);
    assert_eq!(rec.sha256.as_deref(), Some(sha256(&want).as_str()));

    // Removed from the catalog: gone from the server at once.
    assert!(catalog.remove(JUN_PKG));
    let out = run("curl", &["-sS", &url]).await;
    assert!(!out.status.success(), "a removed package is not served");
    let nlst = curl(&["-l", &format!("{base}Jun/")]).await;
    assert!(nlst.is_empty(), "{}", String::from_utf8_lossy(&nlst));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_lists_and_serves_packages_held_in_memory_with_ranges() {
    let (server, _catalog) = serve_from_memory().await;
    let want = zip_with(&[("system.diff", &noise(5000, 7))]);
    let url = server.http_url(ROOT_PKG).unwrap();
    assert_eq!(sha256(&curl(&[&url]).await), sha256(&want));
    assert_eq!(curl(&["-r", "100-199", &url]).await, want[100..200]);

    let index: serde_json::Value =
        serde_json::from_slice(&curl(&[&server.http_url("packages.json").unwrap()]).await).unwrap();
    let paths: Vec<&str> = index
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, [JUN_PKG, BROKEN, ROOT_PKG]);
    let folder = String::from_utf8(curl(&[&server.http_url("Jun").unwrap()]).await).unwrap();
    assert!(folder.contains("fw-v1-to-v2.zip"), "{folder}");

    let status = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &server.http_url(BROKEN).unwrap(),
    ])
    .await;
    assert_eq!(status, b"404".to_vec(), "invalid packages are refused");

    let rec = server
        .wait_download(DEADLINE, |r| {
            r.protocol == Protocol::Http && r.range_start == 100 && r.outcome == Outcome::Complete
        })
        .await
        .expect("a complete HTTP record for the range");
    assert_eq!(rec.status, 206);
    assert_eq!(rec.bytes_sent, 100);
    assert_eq!(rec.size, Some(want.len() as u64));
}
