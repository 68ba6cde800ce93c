//! Many slow HTTP/1.1 downloads at once, each read at a fixed rate: the S6
//! load of `bench/compare.py` (10,000 modules pulling a package at cellular
//! speed). One thread, one small buffer per connection, so the client costs
//! little next to the server it measures.
//!
//! Prints one JSON object on stdout: how many downloads completed (status 200
//! and every `Content-Length` byte), how the others ended, and percentiles of
//! the time to first byte (from the start of `connect`) and of the download
//! time, in milliseconds.
//!
//! ```text
//! slow-client --url http://127.0.0.1:8080/pkg.zip --conns 10000 --rate 20000 \
//!             --deadline-secs 150 [--ramp-secs 5] [--buf 16384] [--rcvbuf 16384] [--mss 1400]
//! ```
//! The rlimit for open files is the caller's to raise (bench/compare.py does).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{sleep_until, timeout_at, Instant};

/// The command line, validated.
struct Args {
    /// `host:port` to connect to.
    addr: String,
    /// Request target, e.g. `/pkg.zip`.
    path: String,
    /// Number of downloads, all held open at once.
    conns: usize,
    /// Read rate per connection, bytes per second.
    rate: f64,
    /// Every download not done by then counts as timed out, seconds.
    deadline_secs: f64,
    /// Spread the connection starts over this many seconds.
    ramp_secs: f64,
    /// Read buffer per connection, bytes.
    buf: usize,
    /// `SO_RCVBUF` asked for before `connect`, bytes; 0 leaves the kernel's
    /// autotuning. A small window, like a module's, also keeps the kernel's
    /// TCP memory (`net.ipv4.tcp_mem`) within bounds at 10,000 connections:
    /// without it loopback windows grow to MiBs and the kernel resets
    /// sockets ("TCP: out of memory").
    rcvbuf: u32,
    /// `TCP_MAXSEG` asked for before `connect`, bytes; 0 leaves loopback's
    /// 64 KiB segments, with which the server's send buffers autotune to MiBs.
    mss: u32,
}

/// How one download ended.
enum Outcome {
    /// Status 200 and every body byte; time to first byte and total, ms.
    Complete { ttfb_ms: f64, total_ms: f64 },
    /// `connect` failed.
    ConnectFailed,
    /// A status other than 200 or a response without `Content-Length`.
    BadResponse { ttfb_ms: Option<f64> },
    /// The connection closed before the last body byte.
    Short { ttfb_ms: Option<f64> },
    /// The deadline passed first.
    TimedOut { ttfb_ms: Option<f64> },
}

fn parse_args() -> Result<Args, String> {
    let mut url = None;
    let (mut conns, mut rate, mut deadline, mut ramp, mut buf) = (100usize, 20_000f64, 120f64, 0f64, 16_384usize);
    let (mut rcvbuf, mut mss) = (0u32, 0u32);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--url" => url = Some(value),
            "--conns" => conns = value.parse().map_err(|e| bad(&e))?,
            "--rate" => rate = value.parse().map_err(|e| bad(&e))?,
            "--deadline-secs" => deadline = value.parse().map_err(|e| bad(&e))?,
            "--ramp-secs" => ramp = value.parse().map_err(|e| bad(&e))?,
            "--buf" => buf = value.parse().map_err(|e| bad(&e))?,
            "--rcvbuf" => rcvbuf = value.parse().map_err(|e| bad(&e))?,
            "--mss" => mss = value.parse().map_err(|e| bad(&e))?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    let url = url.ok_or("--url is required")?;
    let rest = url.strip_prefix("http://").ok_or("only http:// URLs")?;
    let (addr, path) = match rest.find('/') {
        Some(i) => (rest[..i].to_string(), rest[i..].to_string()),
        None => (rest.to_string(), "/".to_string()),
    };
    if conns == 0 || rate <= 0.0 || deadline <= 0.0 || ramp < 0.0 || buf == 0 {
        return Err("--conns, --rate, --deadline-secs, --buf must be positive".into());
    }
    Ok(Args { addr, path, conns, rate, deadline_secs: deadline, ramp_secs: ramp, buf, rcvbuf, mss })
}

/// One download: connect, GET, read the body at `rate` bytes/s until
/// `Content-Length` bytes arrived, the peer closed, or `deadline`.
async fn download(addr: SocketAddr, request: &[u8], rate: f64, buf_len: usize, sock_opts: (u32, u32), deadline: Instant) -> Outcome {
    let start = Instant::now();
    let ms = |t: Instant| t.duration_since(start).as_secs_f64() * 1e3;
    let mut ttfb = None;
    let run = async {
        let Ok(mut sock) = connect(addr, sock_opts).await else {
            return Outcome::ConnectFailed;
        };
        if sock.write_all(request).await.is_err() {
            return Outcome::Short { ttfb_ms: None };
        }
        let mut buf = vec![0u8; buf_len];
        let mut head: Vec<u8> = Vec::new();
        let mut body_len: Option<u64> = None;
        let mut got: u64 = 0;
        let mut read_total: u64 = 0;
        loop {
            let n = match sock.read(&mut buf).await {
                Ok(0) | Err(_) => return Outcome::Short { ttfb_ms: ttfb },
                Ok(n) => n,
            };
            if ttfb.is_none() {
                ttfb = Some(ms(Instant::now()));
            }
            read_total += n as u64;
            match body_len {
                Some(_) => got += n as u64,
                None => {
                    head.extend_from_slice(&buf[..n]);
                    if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                        match parse_head(&head[..end]) {
                            Some(len) => body_len = Some(len),
                            None => return Outcome::BadResponse { ttfb_ms: ttfb },
                        }
                        got = (head.len() - end - 4) as u64;
                        head = Vec::new();
                    } else if head.len() > 16_384 {
                        return Outcome::BadResponse { ttfb_ms: ttfb };
                    }
                }
            }
            if body_len.is_some_and(|len| got >= len) {
                return Outcome::Complete { ttfb_ms: ttfb.unwrap_or(0.0), total_ms: ms(Instant::now()) };
            }
            // Pace: the next read waits until the bytes so far fit the rate.
            let due = start + Duration::from_secs_f64(read_total as f64 / rate);
            if due > Instant::now() {
                sleep_until(due).await;
            }
        }
    };
    match timeout_at(deadline, run).await {
        Ok(outcome) => outcome,
        Err(_) => Outcome::TimedOut { ttfb_ms: ttfb },
    }
}

/// `connect`, with `SO_RCVBUF` and `TCP_MAXSEG` set first where not 0.
async fn connect(addr: SocketAddr, (rcvbuf, mss): (u32, u32)) -> std::io::Result<TcpStream> {
    let sock = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    if rcvbuf > 0 {
        sock.set_recv_buffer_size(rcvbuf as usize)?;
    }
    if mss > 0 {
        sock.set_tcp_mss(mss)?;
    }
    sock.set_nonblocking(true)?;
    TcpSocket::from_std_stream(sock.into()).connect(addr).await
}

/// The `Content-Length` of a 200 response head, else `None`.
fn parse_head(head: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let status = lines.next()?;
    if status.split_whitespace().nth(1) != Some("200") {
        return None;
    }
    lines.find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim().eq_ignore_ascii_case("content-length").then(|| value.trim().parse().ok())?
    })
}

/// The `p`-th percentile (0–100) of `v`, nearest rank; 0 when empty.
fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("slow-client: {e}");
            return ExitCode::from(2);
        }
    };
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: qfota-bench-slow-client\r\nConnection: close\r\n\r\n",
        args.path, args.addr
    );
    let request: &'static [u8] = Box::leak(request.into_bytes().into_boxed_slice());
    let addr: SocketAddr = match args.addr.parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("slow-client: {}: {e} (give an IP address and port)", args.addr);
            return ExitCode::from(2);
        }
    };
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(args.deadline_secs);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.conns {
        let at = t0 + Duration::from_secs_f64(args.ramp_secs * i as f64 / args.conns as f64);
        let (rate, buf, sock_opts) = (args.rate, args.buf, (args.rcvbuf, args.mss));
        tasks.spawn(async move {
            sleep_until(at).await;
            download(addr, request, rate, buf, sock_opts, deadline).await
        });
    }
    let (mut complete, mut connect_failed, mut bad, mut short, mut timed_out) = (0, 0, 0, 0, 0);
    let (mut ttfbs, mut totals) = (Vec::new(), Vec::new());
    while let Some(joined) = tasks.join_next().await {
        let Ok(outcome) = joined else { continue };
        let t = match outcome {
            Outcome::Complete { ttfb_ms, total_ms } => {
                complete += 1;
                totals.push(total_ms);
                Some(ttfb_ms)
            }
            Outcome::ConnectFailed => {
                connect_failed += 1;
                None
            }
            Outcome::BadResponse { ttfb_ms } => {
                bad += 1;
                ttfb_ms
            }
            Outcome::Short { ttfb_ms } => {
                short += 1;
                ttfb_ms
            }
            Outcome::TimedOut { ttfb_ms } => {
                timed_out += 1;
                ttfb_ms
            }
        };
        ttfbs.extend(t);
    }
    let elapsed_ms = t0.elapsed().as_secs_f64() * 1e3;
    println!(
        "{{\"conns\":{},\"complete\":{complete},\"connect_failed\":{connect_failed},\"bad_response\":{bad},\
\"short\":{short},\"timed_out\":{timed_out},\"ttfb_p50_ms\":{:.1},\"ttfb_p99_ms\":{:.1},\"ttfb_max_ms\":{:.1},\
\"download_p50_ms\":{:.0},\"download_p99_ms\":{:.0},\"elapsed_ms\":{elapsed_ms:.0}}}",
        args.conns,
        percentile(&mut ttfbs, 50.0),
        percentile(&mut ttfbs, 99.0),
        percentile(&mut ttfbs, 100.0),
        percentile(&mut totals, 50.0),
        percentile(&mut totals, 99.0),
    );
    ExitCode::SUCCESS
}
