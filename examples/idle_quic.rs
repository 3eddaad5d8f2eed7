//! Bench helper for `bench/idle_quic.sh`: holds many idle HTTP/3 connections open against
//! one proxy, measures the proxy's RSS and CPU before and while they are held, and the
//! latency of a fixed-rate request load on other connections with and without them. The
//! `bulk` mode times large downloads, to check that a transport change costs no throughput.
//!
//! The client is quinn + h3 from one process: connections are spread over several UDP
//! endpoints bound to loopback source addresses 127.0.1.x (so per-IP caps can be kept),
//! with QUIC keep-alive so an idle connection stays open past the server's idle timeout.
//! Every phase is bounded in time; nothing here is used by the proxy itself.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::{Buf, Bytes};
use clap::{Parser, Subcommand};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Idle connections held while a fixed-rate load runs on others.
    Idle(IdleArgs),
    /// Sequential downloads over one connection, in Gbit/s.
    Bulk(BulkArgs),
}

#[derive(clap::Args)]
struct IdleArgs {
    /// The proxy's UDP address.
    #[arg(long)]
    target: SocketAddr,
    /// The proxy's process id (RSS and CPU are read from /proc).
    #[arg(long)]
    pid: u32,
    /// Idle connections to open.
    #[arg(long, default_value_t = 10_000)]
    idle: usize,
    /// Source addresses 127.0.1.1.. the idle connections are spread over.
    #[arg(long, default_value_t = 40)]
    sources: u8,
    /// Connections per client UDP endpoint (one socket each).
    #[arg(long, default_value_t = 100)]
    per_endpoint: usize,
    /// Handshakes in flight at once (the proxy's handshake caps apply).
    #[arg(long, default_value_t = 32)]
    parallel: usize,
    /// Whether each idle connection first makes one request (as a browser after a page load).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    request_first: bool,
    /// QUIC keep-alive (PING) interval of the idle connections.
    #[arg(long, default_value = "15", value_parser = secs)]
    keep_alive: Duration,
    /// How long the idle connections are held before the loaded run (the proxy's CPU is
    /// measured over it: keep-alive cost).
    #[arg(long, default_value = "20", value_parser = secs)]
    hold: Duration,
    /// Active load: requests per second, over this many connections, for this long.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    #[arg(long, default_value_t = 16)]
    active: usize,
    #[arg(long, default_value = "10", value_parser = secs)]
    duration: Duration,
    /// Path requested by the load and by idle connections' first request.
    #[arg(long, default_value = "/bench")]
    path: String,
}

#[derive(clap::Args)]
struct BulkArgs {
    #[arg(long)]
    target: SocketAddr,
    /// Path and query of the large response.
    #[arg(long)]
    path: String,
    #[arg(long, default_value_t = 3)]
    count: u32,
}

fn secs(s: &str) -> Result<Duration, String> {
    s.trim_end_matches('s').parse::<f64>().map(Duration::from_secs_f64).map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().mode {
        Mode::Idle(args) => idle(args).await,
        Mode::Bulk(args) => bulk(args).await,
    }
}

// === Client connections ===

/// One client UDP endpoint on a loopback source address.
fn endpoint(source: IpAddr, keep_alive: Option<Duration>) -> Result<quinn::Endpoint> {
    let trust = quic_ingress::client::TrustOptions { insecure: true, ca_file: None };
    let tls = trust.tls_config(&[b"h3"])?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(keep_alive);
    // Long enough that only the server's idle timeout (the smaller one wins) applies.
    transport.max_idle_timeout(Some(quinn::IdleTimeout::try_from(Duration::from_secs(600))?));
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport));
    let mut endpoint = quinn::Endpoint::client(SocketAddr::new(source, 0))?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

/// An HTTP/3 connection: the QUIC connection (to see whether it is still open) and the
/// request handle; its h3 driver runs in a task of its own.
struct Conn {
    quic: quinn::Connection,
    send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
}

async fn connect(endpoint: &quinn::Endpoint, target: SocketAddr) -> Result<Conn> {
    let quic = endpoint.connect(target, "localhost")?.await?;
    let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(quic.clone())).await?;
    tokio::spawn(async move {
        let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
    });
    Ok(Conn { quic, send })
}

/// One GET; returns the body length.
async fn get(send: &mut h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>, path: &str) -> Result<u64> {
    let req = http::Request::get(format!("https://localhost{path}")).body(())?;
    let mut stream = send.send_request(req).await?;
    stream.finish().await?;
    let resp = stream.recv_response().await?;
    if resp.status() != http::StatusCode::OK {
        bail!("status {}", resp.status());
    }
    let mut len = 0u64;
    while let Some(mut chunk) = stream.recv_data().await? {
        len += chunk.remaining() as u64;
        chunk.advance(chunk.remaining());
    }
    Ok(len)
}

// === The proxy's process ===

/// Resident memory of `pid` in KiB.
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS")?;
    line.split_whitespace().nth(1).context("VmRSS value")?.parse().context("VmRSS number")
}

/// CPU time (user + system) of `pid` so far, in clock ticks (1/100 s on Linux).
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').context("stat format")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> Result<u64> { Ok(fields.get(i).context("stat field")?.parse()?) };
    // utime and stime are fields 14 and 15 of stat, 11 and 12 after the name.
    Ok(field(11)? + field(12)?)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

// === The fixed-rate load ===

/// Latencies of one load run, in microseconds, and the failures.
struct LoadResult {
    latencies_us: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
}

impl LoadResult {
    fn percentile_ms(&self, p: f64) -> f64 {
        percentile(&self.latencies_us, p) as f64 / 1000.0
    }
}

/// The value at quantile `p` (0..=1) of `sorted` (nearest rank); 0 when empty.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `rate` requests per second spread over `conns`, each timed from when it was due (so a
/// stall counts against every request it delays), for `duration`.
async fn load(conns: &[Conn], rate: u32, duration: Duration, path: &str) -> LoadResult {
    let per_conn = f64::from(rate.max(1)) / conns.len().max(1) as f64;
    let period = Duration::from_secs_f64(1.0 / per_conn);
    let mut workers = JoinSet::new();
    for (i, conn) in conns.iter().enumerate() {
        let send = conn.send.clone();
        let path = path.to_string();
        // Staggered starts, so the connections do not fire in step.
        let start = Instant::now() + period.mul_f64(i as f64 / conns.len() as f64);
        workers.spawn(async move {
            let mut ticks = tokio::time::interval_at(start, period);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
            let end = start + duration;
            let mut requests = JoinSet::new();
            loop {
                let due = ticks.tick().await;
                if due >= end {
                    break;
                }
                let mut send = send.clone();
                let path = path.clone();
                requests.spawn(async move { get(&mut send, &path).await.map(|_| due.elapsed()) });
            }
            let mut out = LoadResult { latencies_us: Vec::new(), errors: 0, first_error: None };
            // Bounded: each request has the rest of a generous deadline.
            let deadline = Instant::now() + Duration::from_secs(10);
            while let Ok(Some(done)) = tokio::time::timeout_at(deadline, requests.join_next()).await {
                match done {
                    Ok(Ok(latency)) => out.latencies_us.push(latency.as_micros() as u64),
                    Ok(Err(e)) => {
                        out.errors += 1;
                        out.first_error.get_or_insert(format!("{e:#}"));
                    }
                    Err(e) => {
                        out.errors += 1;
                        out.first_error.get_or_insert(e.to_string());
                    }
                }
            }
            out.errors += requests.len() as u64;
            out
        });
    }
    let mut result = LoadResult { latencies_us: Vec::new(), errors: 0, first_error: None };
    while let Some(done) = workers.join_next().await {
        if let Ok(worker) = done {
            result.latencies_us.extend(worker.latencies_us);
            result.errors += worker.errors;
            result.first_error = result.first_error.or(worker.first_error);
        }
    }
    result.latencies_us.sort_unstable();
    result
}

fn print_load(label: &str, r: &LoadResult, duration: Duration) {
    println!(
        "  {label:<22} {:>8.0} ok/s  p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>7.2} ms  errors {}{}",
        r.latencies_us.len() as f64 / duration.as_secs_f64(),
        r.percentile_ms(0.50),
        r.percentile_ms(0.99),
        r.latencies_us.last().copied().unwrap_or(0) as f64 / 1000.0,
        r.errors,
        r.first_error.as_deref().map(|e| format!(" (first: {e})")).unwrap_or_default()
    );
}

// === Modes ===

async fn idle(args: IdleArgs) -> Result<()> {
    // Keep-alive here too: opening many idle connections can take longer than the
    // server's idle timeout, and the load connections wait meanwhile.
    let local = endpoint(IpAddr::V4(Ipv4Addr::LOCALHOST), Some(args.keep_alive))?;
    let mut active = Vec::new();
    for _ in 0..args.active.max(1) {
        active.push(connect(&local, args.target).await.context("active connection")?);
    }
    // Warm-up: lazily built state (route table lookups, pools, allocator arenas) exists
    // before the first RSS reading.
    let _ = load(&active, args.rate, Duration::from_secs(2), &args.path).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = rss_kib(args.pid)?;
    println!("load average before: {}", load_average());
    let baseline = load(&active, args.rate, args.duration, &args.path).await;

    // Open the idle connections.
    let sources: Vec<IpAddr> = (1..=args.sources.max(1)).map(|n| IpAddr::V4(Ipv4Addr::new(127, 0, 1, n))).collect();
    let endpoints_needed = args.idle.div_ceil(args.per_endpoint.max(1));
    let mut endpoints = Vec::with_capacity(endpoints_needed);
    for i in 0..endpoints_needed {
        endpoints.push(endpoint(sources[i % sources.len()], Some(args.keep_alive))?);
    }
    let gate = Arc::new(Semaphore::new(args.parallel.max(1)));
    let mut opening = JoinSet::new();
    let started = Instant::now();
    for i in 0..args.idle {
        let endpoint = endpoints[i % endpoints.len()].clone();
        let (gate, target, path, request_first) = (gate.clone(), args.target, args.path.clone(), args.request_first);
        opening.spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let mut conn = tokio::time::timeout(Duration::from_secs(20), connect(&endpoint, target)).await??;
            if request_first {
                tokio::time::timeout(Duration::from_secs(20), get(&mut conn.send, &path)).await??;
            }
            anyhow::Ok(conn)
        });
    }
    let mut idle = Vec::with_capacity(args.idle);
    let mut failed = 0usize;
    let mut first_error = None;
    while let Some(done) = opening.join_next().await {
        match done {
            Ok(Ok(conn)) => idle.push(conn),
            Ok(Err(e)) => {
                failed += 1;
                first_error.get_or_insert(format!("{e:#}"));
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    let took = started.elapsed().as_secs_f64();
    println!(
        "idle connections: {} open, {failed} failed{}, in {took:.1} s ({:.0}/s), over {} source addresses, {} client endpoints",
        idle.len(),
        first_error.map(|e| format!(" (first: {e})")).unwrap_or_default(),
        idle.len() as f64 / took,
        sources.len(),
        endpoints.len()
    );

    // Held idle: memory once settled, and the CPU keep-alives cost.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (cpu0, t0) = (cpu_ticks(args.pid)?, Instant::now());
    tokio::time::sleep(args.hold).await;
    let cpu_idle = (cpu_ticks(args.pid)? - cpu0) as f64 / 100.0 / t0.elapsed().as_secs_f64();
    let rss_idle = rss_kib(args.pid)?;
    println!("load average with idle held: {}", load_average());
    let with_idle = load(&active, args.rate, args.duration, &args.path).await;
    let still_open = idle.iter().filter(|c| c.quic.close_reason().is_none()).count();
    let rss_after = rss_kib(args.pid)?;

    let n = idle.len().max(1) as f64;
    println!(
        "proxy RSS: {:.1} MiB before, {:.1} MiB with {} idle held, {:.1} MiB after the loaded run",
        rss_before as f64 / 1024.0,
        rss_idle as f64 / 1024.0,
        idle.len(),
        rss_after as f64 / 1024.0
    );
    println!("per idle connection: {:.1} KiB", rss_idle.saturating_sub(rss_before) as f64 / n);
    println!(
        "proxy CPU while only idle connections were held ({:.0} s, keep-alive every {:.0} s): {:.1}% of a core",
        args.hold.as_secs_f64(),
        args.keep_alive.as_secs_f64(),
        cpu_idle * 100.0
    );
    println!("idle connections still open after the loaded run: {still_open}/{}", idle.len());
    println!(
        "active load: {} req/s over {} connections for {:.0} s, path {}",
        args.rate,
        active.len(),
        args.duration.as_secs_f64(),
        args.path
    );
    print_load("without idle", &baseline, args.duration);
    print_load("with idle held", &with_idle, args.duration);
    if baseline.percentile_ms(0.99) > 0.0 {
        println!("p99 with/without idle: {:.2}x", with_idle.percentile_ms(0.99) / baseline.percentile_ms(0.99));
    }
    for c in &idle {
        c.quic.close(0u32.into(), b"done");
    }
    for e in &endpoints {
        let _ = tokio::time::timeout(Duration::from_secs(2), e.wait_idle()).await;
    }
    Ok(())
}

async fn bulk(args: BulkArgs) -> Result<()> {
    let endpoint = endpoint(IpAddr::V4(Ipv4Addr::LOCALHOST), None)?;
    let mut conn = connect(&endpoint, args.target).await?;
    let mut rates = Vec::new();
    for _ in 0..args.count {
        let started = Instant::now();
        let len = tokio::time::timeout(Duration::from_secs(120), get(&mut conn.send, &args.path)).await??;
        let secs = started.elapsed().as_secs_f64();
        rates.push(len as f64 * 8.0 / secs / 1e9);
        println!("  {:.1} MiB in {secs:.3} s: {:.2} Gbit/s", len as f64 / 1048576.0, len as f64 * 8.0 / secs / 1e9);
    }
    rates.sort_by(f64::total_cmp);
    if let Some(median) = rates.get(rates.len() / 2) {
        println!("bulk median: {median:.2} Gbit/s over {} downloads", rates.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.99), 99);
        assert_eq!(percentile(&v, 0.5), 50);
        assert_eq!(percentile(&v, 1.0), 100);
        assert_eq!(percentile(&[7], 0.99), 7);
        assert_eq!(percentile(&[], 0.99), 0);
    }
}
