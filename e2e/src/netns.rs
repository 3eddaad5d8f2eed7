//! A test host: a network namespace of this test process, joined to the machine by a veth
//! pair, with an address EndpointSlices accept.
//!
//! The API server refuses loopback addresses in EndpointSlices, and tests may send traffic
//! only to loopback or to hosts the test run made itself (never to the machine's own
//! outside address). So backends that must appear in EndpointSlices run inside
//! `qi-e2e-<pid>`, on `10.231.N.2` (N = pid % 250, the next free one if taken), and the
//! controller in the root namespace reaches them through the veth whose host end is
//! `10.231.N.1/30`.
//!
//! One per test binary ([`TestHost::shared`]). It is deleted when the test process exits,
//! however it exits (a helper `sh` waits for EOF on a pipe only this process holds);
//! namespaces of dead test processes are removed the next time one is made. By hand:
//! `ip netns del qi-e2e-<pid>` (the veth pair goes with it).
//!
//! Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) and `ip` from iproute2.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};

use anyhow::{Context as _, anyhow, bail};
use tokio::sync::OnceCell;

/// Prefix of the namespaces test processes create.
pub const NETNS_PREFIX: &str = "qi-e2e-";

/// A network namespace with one address, reachable from the root namespace.
pub struct TestHost {
    name: String,
    host_if: String,
    ip: Ipv4Addr,
    gateway: Ipv4Addr,
    /// Deletes the namespace when this process exits (its stdin is our pipe).
    _janitor: Option<(Child, ChildStdin)>,
}

static SHARED: OnceCell<Result<TestHost, String>> = OnceCell::const_new();

impl TestHost {
    /// The test host of this test binary, made on first use.
    pub async fn shared() -> anyhow::Result<&'static TestHost> {
        let host = SHARED
            .get_or_init(|| async {
                tokio::task::spawn_blocking(TestHost::create)
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| format!("{e:#}")))
            })
            .await;
        host.as_ref().map_err(|e| anyhow!("no test host network namespace: {e}"))
    }

    fn create() -> anyhow::Result<TestHost> {
        check_ip_command()?;
        remove_stale();
        let pid = std::process::id();
        let name = format!("{NETNS_PREFIX}{pid}");
        // Interface names have at most 15 characters; pids have at most 7 digits.
        let host_if = format!("qi{pid}h");
        let peer_if = format!("qi{pid}n");
        // Leftovers of an earlier process with this pid.
        let _ = ip(&["netns", "del", &name]);
        let _ = ip(&["link", "del", &host_if]);
        let n = free_subnet(pid)?;
        let (gateway, ip_addr) = (Ipv4Addr::new(10, 231, n, 1), Ipv4Addr::new(10, 231, n, 2));

        ip(&["netns", "add", &name])?;
        // From here on a failure must not leave the namespace behind.
        let janitor = spawn_janitor(&name, &host_if);
        let setup = (|| {
            ip(&["link", "add", &host_if, "type", "veth", "peer", "name", &peer_if, "netns", &name])?;
            ip(&["addr", "add", &format!("{gateway}/30"), "dev", &host_if])?;
            ip(&["link", "set", &host_if, "up"])?;
            ip(&["-n", &name, "addr", "add", &format!("{ip_addr}/30"), "dev", &peer_if])?;
            ip(&["-n", &name, "link", "set", &peer_if, "up"])?;
            ip(&["-n", &name, "link", "set", "lo", "up"])?;
            Ok::<_, anyhow::Error>(())
        })();
        if let Err(e) = setup {
            let _ = ip(&["netns", "del", &name]);
            let _ = ip(&["link", "del", &host_if]);
            return Err(e);
        }
        Ok(TestHost { name, host_if, ip: ip_addr, gateway, _janitor: janitor.ok() })
    }

    /// The namespace's name, `qi-e2e-<pid>`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host's address (inside the namespace), for EndpointSlices and listeners.
    pub fn ip(&self) -> IpAddr {
        IpAddr::V4(self.ip)
    }

    /// The root namespace's end of the veth pair.
    pub fn gateway(&self) -> IpAddr {
        IpAddr::V4(self.gateway)
    }

    /// The veth interface in the root namespace.
    pub fn host_interface(&self) -> &str {
        &self.host_if
    }

    /// A command that runs `program` inside the namespace (`ip netns exec NAME program`);
    /// add arguments and spawn it as usual.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `cmd` (program, arguments, environment and working directory) inside the
    /// namespace, its output going to `log`. `ip netns exec` execs the program in place,
    /// so the returned process is the program itself and is killed on drop.
    pub fn spawn(&self, name: &str, cmd: &Command, log: &Path) -> anyhow::Result<crate::process::TestProcess> {
        let mut inner = self.command(cmd.get_program());
        inner.args(cmd.get_args());
        for (key, value) in cmd.get_envs() {
            match value {
                Some(v) => inner.env(key, v),
                None => inner.env_remove(key),
            };
        }
        if let Some(dir) = cmd.get_current_dir() {
            inner.current_dir(dir);
        }
        crate::process::TestProcess::spawn(name, inner, log.to_path_buf())
    }
}

fn check_ip_command() -> anyhow::Result<()> {
    match Command::new("ip").arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status() {
        Ok(_) => {}
        Err(e) => bail!(
            "the `ip` command (iproute2) is needed for the test host network namespace: {e}; \
             install it with `make -f e2e/testenv.mk e2e-deps` (or apt-get install iproute2)"
        ),
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("creating the test host network namespace needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN)");
    }
    Ok(())
}

fn ip(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip").args(args).output().with_context(|| format!("running ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!("ip {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `sh` that waits for EOF on stdin (this process exiting closes the pipe), then deletes
/// the namespace and the host end of the veth pair.
fn spawn_janitor(name: &str, host_if: &str) -> anyhow::Result<(Child, ChildStdin)> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(r#"cat >/dev/null; ip netns del "$1" 2>/dev/null; ip link del "$2" 2>/dev/null; exit 0"#)
        .args(["qi-e2e-janitor", name, host_if])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the network namespace janitor")?;
    let stdin = child.stdin.take().ok_or_else(|| anyhow!("no stdin pipe to the janitor"))?;
    Ok((child, stdin))
}

/// Removes `qi-e2e-<pid>` namespaces and `qi<pid>h` links whose process is gone.
fn remove_stale() {
    let dead = |pid: &str| pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists();
    if let Ok(list) = ip(&["netns", "list"]) {
        for line in list.lines() {
            let Some(name) = line.split_whitespace().next() else { continue };
            if let Some(pid) = name.strip_prefix(NETNS_PREFIX)
                && dead(pid)
            {
                eprintln!("quic-ingress-e2e: removing stale network namespace {name}");
                let _ = ip(&["netns", "del", name]);
            }
        }
    }
    if let Ok(links) = ip(&["-o", "link", "show"]) {
        for line in links.lines() {
            // "7: qi1234h@if6: <...>"
            let Some(ifname) = line.split(':').nth(1).map(|s| s.trim().split('@').next().unwrap_or("")) else {
                continue;
            };
            if let Some(pid) = ifname.strip_prefix("qi").and_then(|s| s.strip_suffix('h'))
                && dead(pid)
            {
                let _ = ip(&["link", "del", ifname]);
            }
        }
    }
}

/// N for 10.231.N.0/30: pid % 250, or the next one no interface uses yet.
fn free_subnet(pid: u32) -> anyhow::Result<u8> {
    let used = ip(&["-o", "-4", "addr", "show"])?;
    let start = pid % 250;
    for i in 0..250 {
        let n = ((start + i) % 250) as u8;
        if !used.contains(&format!(" 10.231.{n}.")) {
            return Ok(n);
        }
    }
    bail!("every 10.231.N.0/30 subnet is in use")
}
