//! End-to-end tests of the module's file system (UFS), local-file FOTA
//! (SPEC §9), `ec200`'s `FILE:<length>` over the AT port, the family
//! semantics of seeds 000–002 (retry rules, `eg06xk-dfota`'s `END,505`,
//! `ec200`'s unrecoverable power loss), power cuts during the download and
//! the download codes only module-side causes produce — through
//! `sim::Module`, against the real server where a download is involved
//! (the `simulate` binary's `--local-file` / `--uart-file` are tested in
//! `tests/simulate_cli.rs`). Every await is bounded; nothing sleeps to wait.

use std::time::Duration;

mod common;

use common::{Fixture, bounded};
use qfota_serve::profile::Profile;
use qfota_serve::sim::{Module, ModuleBuilder, Transcript};

/// Module delays: a 20 s reboot takes 10 ms, the upgrade 60 ms.
const SCALE: f64 = 0.0005;
/// The sample package of `packages/`.
const PKG: &str = "update-v12-to-v13.zip";

fn package() -> Vec<u8> {
    std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/packages/update-v12-to-v13.zip"
    ))
    .unwrap()
}

fn builder(profile: &str) -> ModuleBuilder {
    Module::builder(Profile::by_name(profile).unwrap())
        .time_scale(SCALE)
        .timeout(Duration::from_secs(10))
}

async fn run(module: &Module, at_args: &str) -> Transcript {
    bounded("a module run", module.fotadl(at_args).transcript()).await
}

fn q(rest: &str) -> String {
    format!("+QIND: \"FOTA\",{rest}")
}

fn ends(t: &Transcript) -> Vec<u16> {
    t.summary.upgrade_codes.clone()
}

#[tokio::test]
async fn local_file_fota_on_every_family_with_a_prefix() {
    for (family, prefix) in [
        ("ec2x", "/data/ufs/"),
        ("ep06", "/data/ufs/"),
        ("eg06xk-dfota", "/usrdata/cache/ufs/"),
        ("eg06xk", "/cache/ufs/"),
    ] {
        let m = builder(family).version("v12").build().unwrap();
        let stored = m.ufs().write(&format!("UFS:{PKG}"), package()).unwrap();
        assert_eq!(stored.size, package().len() as u64);
        let t = run(&m, &format!("\"{prefix}{PKG}\"")).await;
        let mut want = vec![
            format!("AT+QFOTADL=\"{prefix}{PKG}\""),
            "OK".to_string(),
            // These families upgrade in recovery mode (seed 000 §3.3.3:
            // "The module reboots automatically").
            "RDY".to_string(),
            q("\"START\""),
        ];
        want.extend((1..=100).map(|p| q(&format!("\"UPDATING\",{p}"))));
        want.extend([q("\"END\",0"), "RDY".to_string()]);
        assert_eq!(t.lines(), want, "{family}");
        assert_eq!(t.summary.download_code, None);
        assert_eq!(m.version().as_deref(), Some("v13"), "{family}");
        // The file is still there after the reboots.
        assert_eq!(m.ufs().list("*").unwrap().len(), 1);
    }
}

#[tokio::test]
async fn a_local_package_is_checked_like_a_downloaded_one() {
    let m = builder("ec2x").build().unwrap();
    m.ufs().write("broken.zip", b"not a zip".to_vec()).unwrap();
    let broken = run(&m, r#""/data/ufs/broken.zip""#).await;
    assert_eq!(ends(&broken), vec![504; 5]);
    let missing = run(&m, r#""/data/ufs/nothing.zip""#).await;
    assert_eq!(ends(&missing), vec![504; 5]);
    assert!(
        missing.summary.notes[0].contains("not found"),
        "{:?}",
        missing.summary.notes
    );
    let v11 = builder("eg06xk").version("v11").build().unwrap();
    v11.ufs().write(PKG, package()).unwrap();
    let mismatch = run(&v11, &format!("\"/cache/ufs/{PKG}\"")).await;
    assert_eq!(ends(&mismatch), vec![510; 5]);
    // Paths over the family's limit or prefix are ERROR.
    let long = format!("\"/data/ufs/{}\"", "a".repeat(81));
    assert_eq!(run(&m, &long).await.lines()[1], "ERROR");
    assert_eq!(run(&m, r#""/cache/ufs/x.zip""#).await.lines()[1], "ERROR");
}

/// A package stored under a name that states no versions (fwupd uploads
/// every package as `dfota_update.bin`) is version-checked and upgrades to
/// what its own `version.txt` states.
#[tokio::test]
async fn a_package_named_without_versions_goes_by_its_version_txt() {
    const NAME: &str = "dfota_update.bin";
    let m = builder("ec2x").version("v12").build().unwrap();
    m.ufs().write(NAME, package()).unwrap();
    let t = run(&m, &format!("\"/data/ufs/{NAME}\"")).await;
    assert_eq!(ends(&t), vec![0]);
    assert_eq!(m.version().as_deref(), Some("v13"));
    let v11 = builder("ec2x").version("v11").build().unwrap();
    v11.ufs().write(NAME, package()).unwrap();
    let mismatch = run(&v11, &format!("\"/data/ufs/{NAME}\"")).await;
    assert_eq!(ends(&mismatch), vec![510; 5]);
    assert_eq!(v11.version().as_deref(), Some("v11"));
}

/// Seed 002 §3: a version mismatch is `END,505` once, and the package is
/// deleted; the module never enters recovery mode.
#[tokio::test]
async fn eg06xk_dfota_reports_a_version_mismatch_once_and_deletes_the_package() {
    let m = builder("eg06xk-dfota").version("v11").build().unwrap();
    m.ufs().write(PKG, package()).unwrap();
    let t = run(&m, &format!("\"/usrdata/cache/ufs/{PKG}\"")).await;
    assert_eq!(
        t.lines()[1..],
        ["OK".to_string(), q("\"END\",505")],
        "no START, no reboot"
    );
    assert!(m.ufs().list("*").unwrap().is_empty(), "package deleted");
    assert_eq!(m.version().as_deref(), Some("v11"));
}

#[tokio::test]
async fn ec200_takes_the_package_over_the_at_port() {
    let m = builder("ec200").build().unwrap();
    let bytes = package();
    let mut run = m.fotadl(&format!("\"FILE:{}\",1,5", bytes.len()));
    let input = run.file_input().expect("FILE: run takes bytes");
    let (head, tail) = bytes.split_at(bytes.len() / 2);
    assert_eq!(input.send(head).unwrap(), head.len());
    // Bytes past <length> are not package data.
    let mut rest = tail.to_vec();
    rest.extend_from_slice(b"AT\r");
    assert_eq!(input.send(&rest).unwrap(), tail.len());
    assert_eq!(input.remaining(), 0);
    let t = bounded("FILE: run", run.transcript()).await;
    let mut want = vec![
        format!("AT+QFOTADL=\"FILE:{}\",1,5", bytes.len()),
        "OK".to_string(),
        q("\"FILESTART\""),
    ];
    want.extend((1..=5).map(|k| q(&format!("\"DOWNLOADING\",{k}"))));
    want.push(q("\"FILEEND\",0"));
    want.push(q("\"START\""));
    want.extend((1..=100).map(|p| q(&format!("\"UPDATING\",{p}"))));
    want.extend([q("\"END\",0"), "RDY".to_string()]);
    assert_eq!(t.lines(), want);
    assert_eq!(t.summary.download_code, Some(0));
}

#[tokio::test]
async fn ec200_file_transfer_that_stops_short_is_fileend_500() {
    let m = builder("ec200").build().unwrap();
    let mut run = m.fotadl(r#""FILE:1000""#);
    let input = run.file_input().unwrap();
    input.send(&[0u8; 400]).unwrap();
    drop(input);
    let t = bounded("short FILE: run", run.transcript()).await;
    assert_eq!(t.lines().last().unwrap(), &q("\"FILEEND\",500"));
    assert!(t.summary.upgrade_codes.is_empty());
    // And with no data within the timeout.
    let quick = builder("ec200")
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let mut run = quick.fotadl(r#""FILE:10""#);
    let _input = run.file_input().unwrap();
    let t = bounded("silent FILE: run", run.transcript()).await;
    assert_eq!(t.summary.download_code, Some(500));
    // Protocol mode: 010003 and nothing more.
    let t = run_protocol(&m).await;
    assert_eq!(t.lines()[1..], ["010003".to_string()]);
}

async fn run_protocol(m: &Module) -> Transcript {
    run(m, r#""FILE:10",2"#).await
}

/// Seed 001 §5: power lost during the upgrade is unrecoverable.
#[tokio::test]
async fn ec200_power_cut_during_the_upgrade_leaves_no_firmware_until_repaired() {
    let m = builder("ec200")
        .fault("power-cut=40".parse().unwrap())
        .build()
        .unwrap();
    let mut run = m.fotadl(r#""FILE:4""#);
    run.file_input().unwrap().send(b"img!").unwrap();
    let t = bounded("cut run", run.transcript()).await;
    assert!(t.lines().last().unwrap().contains("\"UPDATING\",40"));
    assert!(!t.lines().contains(&"RDY".to_string()));
    assert!(m.firmware_lost());
    assert!(!m.power_on(), "no RDY");
    let dead = run_protocol(&m).await;
    assert_eq!(dead.lines().len(), 1, "nothing answers: {:?}", dead.lines());
    m.repair();
    assert!(m.power_on());
    assert_eq!(run_protocol(&m).await.lines()[1], "010003");
}

#[tokio::test]
async fn power_cut_during_the_download_reboots_into_the_old_firmware() {
    let real = Fixture::start(|b| b).await;
    let m = builder("ec2x")
        .version("v12")
        .fault("download-power-cut=50".parse().unwrap())
        .build()
        .unwrap();
    let t = run(&m, &format!("\"{}\"", real.http_url(PKG))).await;
    assert_eq!(
        t.lines()[1..],
        ["OK".to_string(), q("\"HTTPSTART\""), "RDY".to_string()]
    );
    assert_eq!(t.summary.download_code, None);
    assert_eq!(m.version().as_deref(), Some("v12"));
}

#[tokio::test]
async fn module_side_download_codes_on_ec200() {
    let real = Fixture::start(|b| b).await;
    let (ftp, http) = (real.ftp_url(PKG), real.http_url(PKG));
    // download-error: the first N downloads over that protocol.
    let m = builder("ec200")
        .fault("download-error=602x1".parse().unwrap())
        .fault("download-error=724x1".parse().unwrap())
        .build()
        .unwrap();
    let code = |t: Transcript| t.summary.download_code;
    assert_eq!(code(run(&m, &format!("\"{ftp}\"")).await), Some(602));
    assert_eq!(code(run(&m, &format!("\"{http}\"")).await), Some(724));
    assert_eq!(code(run(&m, &format!("\"{ftp}\"")).await), Some(0));
    // 611 / 729: the package does not fit the UFS.
    let small = builder("ec200").free_space(100).build().unwrap();
    assert_eq!(code(run(&small, &format!("\"{ftp}\"")).await), Some(611));
    assert_eq!(code(run(&small, &format!("\"{http}\"")).await), Some(729));
    // Elsewhere the download succeeds and the check says END,511.
    let ec2x = builder("ec2x").free_space(100).build().unwrap();
    let t = run(&ec2x, &format!("\"{http}\"")).await;
    assert_eq!((t.summary.download_code, ends(&t)), (Some(0), vec![511; 5]));
    // 610 / 711 / 713: hosts the module's stack refuses.
    let plain = builder("ec200").build().unwrap();
    assert_eq!(code(run(&plain, r#""ftp://a!b/p.bin""#).await), Some(610));
    assert_eq!(code(run(&plain, r#""http://a!b/p.bin""#).await), Some(711));
    assert_eq!(
        code(run(&plain, r#""http://256.1.1.1/p.bin""#).await),
        Some(713)
    );
    real.server.shutdown().await;
}
