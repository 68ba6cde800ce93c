//! qfota-serve as a test fixture: start a real server on free loopback
//! ports with a fault rule, point a simulated EC25 at it over FTP and HTTP,
//! and check both what the module reported and what the server logged.
//!
//! Run with `cargo run --example fixture`; exits 0 when every check holds.

use std::time::Duration;

use qfota_serve::dlog::Outcome;
use qfota_serve::profile::Profile;
use qfota_serve::serve::Server;
use qfota_serve::sim::Module;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let packages = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("packages");

    // A server that drops the first HTTP download of update-*.zip halfway.
    // No HTTPS: nothing below uses it, and it would cost an RSA key.
    let server = Server::builder()
        .packages(&packages)
        .ftp(0)
        .http(0)
        .user("test", "test")
        .fault("drop-after=50%,path=/update-*.zip,protocol=http,times=1".parse()?)
        .start()
        .await?;
    let ftp = server.ftp_url("update-v12-to-v13.zip").expect("FTP is on");
    let http = server
        .http_url("update-v12-to-v13.zip")
        .expect("HTTP is on");

    let ec25 = Module::builder(Profile::for_model("EC25")?)
        .version("v12")
        .build()?;

    // FTP: the whole FOTA succeeds and the module runs the new firmware.
    let run = ec25.fotadl(&format!("\"{ftp}\"")).transcript().await;
    println!("{}", run.lines().join("\n"));
    anyhow::ensure!(run.summary.succeeded(), "FTP run failed: {:?}", run.summary);
    anyhow::ensure!(ec25.version().as_deref() == Some("v13"));

    // HTTP: the fault cuts the body; an EC25 reports 701 and keeps v13.
    let run = ec25.fotadl(&format!("\"{http}\"")).transcript().await;
    println!("{}", run.lines().join("\n"));
    anyhow::ensure!(run.summary.download_code == Some(701), "{:?}", run.summary);

    // The server's side of the story.
    let aborted = server
        .wait_download(Duration::from_secs(10), |r| r.outcome == Outcome::Aborted)
        .await
        .ok_or_else(|| anyhow::anyhow!("no aborted download logged"))?;
    println!(
        "server: {} {} {} of {:?} bytes, fault {:?}",
        aborted.protocol.as_str(),
        aborted.path,
        aborted.bytes_sent,
        aborted.size,
        aborted.fault
    );
    anyhow::ensure!(aborted.fault.is_some());
    anyhow::ensure!(
        server
            .downloads()
            .iter()
            .any(|r| r.outcome == Outcome::Complete)
    );

    server.shutdown().await;
    println!("fixture example: all checks passed");
    Ok(())
}
