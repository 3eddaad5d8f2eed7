//! The `quic-ingress` command line: parses arguments, sets up logging, and maps errors to
//! the exit codes of SPEC.md (0 ok, 1 runtime failure, 2 bad usage or configuration).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use quic_ingress::client::{self, H3Client, RequestBody, TrustOptions};
use quic_ingress::demo_backend::{self, DemoProtocol};
use quic_ingress::kube::controller::{self, ControllerOptions};
use quic_ingress::kube::status::Publish;
use quic_ingress::telemetry::traces::TracingConfig;
use quic_ingress::telemetry::{self, LogFormat};

#[derive(Parser)]
#[command(
    name = "quic-ingress",
    version,
    about = "HTTP/3 ingress for Kubernetes, and a standalone HTTP/3 reverse proxy"
)]
struct Cli {
    /// Log line format.
    #[arg(long, global = true, value_enum, env = "QUIC_INGRESS_LOG_FORMAT", default_value = "json")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Standalone mode: serve the routes of a YAML file.
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
    /// Print the BackendGroup CustomResourceDefinition (YAML).
    Crd,
    /// Kubernetes mode: serve the routes of Ingresses and BackendGroups.
    Controller {
        /// Kubeconfig file (in-cluster configuration or $KUBECONFIG when omitted).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        #[arg(long, default_value = "quic")]
        ingress_class: String,
        /// Watch only this namespace (all namespaces when omitted).
        #[arg(long)]
        namespace: Option<String>,
        /// Publish this Service's address in Ingress status (NAMESPACE/NAME).
        #[arg(long, conflicts_with = "publish_address")]
        publish_service: Option<String>,
        /// Publish these addresses (comma-separated IPs or hostnames) in Ingress status.
        #[arg(long)]
        publish_address: Option<String>,
        /// UDP (HTTP/3) and TCP (HTTP/1.1, HTTP/2) listen address.
        #[arg(long, default_value = "0.0.0.0:443")]
        listen: SocketAddr,
        /// Admin address: /healthz, /readyz, /debug/routes.
        #[arg(long, default_value = "0.0.0.0:9090")]
        admin_listen: SocketAddr,
        /// Port advertised in Alt-Svc (behind a load balancer).
        #[arg(long)]
        alt_svc_port: Option<u16>,
        /// Certificate for hosts without a TLS secret (self-signed when omitted).
        #[arg(long, requires = "default_key")]
        default_cert: Option<PathBuf>,
        #[arg(long, requires = "default_cert")]
        default_key: Option<PathBuf>,
        /// How long in-flight requests may take to finish after SIGTERM.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        drain_timeout: std::time::Duration,
        /// Export traces over OTLP/HTTP to this URL (e.g. http://otel-collector:4318).
        #[arg(long)]
        otlp_endpoint: Option<String>,
        /// Share of new traces sampled.
        #[arg(long, default_value = "1.0")]
        trace_sampling_ratio: f64,
        /// Serve GET, HEAD and OPTIONS from 0-RTT early data (other methods get 425).
        /// Default: true, unless --ticket-key-secret is given.
        #[arg(long)]
        early_data: Option<bool>,
        /// Secret (NAMESPACE/NAME) whose `ticket.key` holds session-ticket keys shared by
        /// every replica, so resumption works behind a load balancer (no 0-RTT then).
        #[arg(long)]
        ticket_key_secret: Option<String>,
        /// QUIC congestion control.
        #[arg(long, value_enum, default_value = "cubic")]
        congestion_control: quic_ingress::config::CongestionControl,
        /// A proxy or load balancer in front (address or CIDR range) whose X-Forwarded-For
        /// and Forwarded are believed; repeat for several. From anyone else they are replaced.
        #[arg(long = "trusted-proxy", value_name = "CIDR")]
        trusted_proxies: Vec<quic_ingress::net::Cidr>,
        /// Serve /debug/routes (every tenant's hosts and backends) to any peer of the admin
        /// address; by default only loopback peers (kubectl port-forward) get it.
        #[arg(long)]
        debug_routes_from_anywhere: bool,
    },
    /// Validate a standalone configuration file and exit.
    CheckConfig { file: PathBuf },
    /// A small echo backend for demos and tests.
    DemoBackend {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        name: String,
        #[arg(long, value_enum, default_value = "http1")]
        protocol: DemoProtocol,
    },
    /// Send one request and print status, protocol and body (HTTP/3 unless told otherwise).
    Get {
        url: String,
        /// Accept any server certificate.
        #[arg(short = 'k', long)]
        insecure: bool,
        /// Trust this CA bundle (PEM).
        #[arg(long)]
        cacert: Option<PathBuf>,
        #[arg(long, conflicts_with_all = ["http2", "http1"])]
        http3: bool,
        #[arg(long, conflicts_with = "http1")]
        http2: bool,
        #[arg(long)]
        http1: bool,
        /// Request method.
        #[arg(short = 'X', long, default_value = "GET")]
        method: String,
        /// Extra request header, `Name: value` (repeatable).
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// Request body.
        #[arg(short = 'd', long)]
        data: Option<String>,
        /// Print response headers too.
        #[arg(short = 'i', long)]
        include: bool,
        /// Dial this address instead of the URL's host (SNI and authority stay the URL's).
        #[arg(long, value_name = "ADDR:PORT")]
        connect_to: Option<SocketAddr>,
        /// HTTP/3 0-RTT: fetch a session ticket on a first connection (with a HEAD request),
        /// then send this request as early data on a resumed one; says whether the server
        /// accepted it.
        #[arg(long, conflicts_with_all = ["http2", "http1"])]
        early_data: bool,
    },
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    quic_ingress::config::parse_duration(s)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let quiet = matches!(cli.command, Command::Get { .. } | Command::CheckConfig { .. } | Command::Crd);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let traces = trace_settings(&cli.command);
    runtime.block_on(async {
        if let Err(e) = telemetry::init(cli.log_format, if quiet { "warn" } else { "info" }, traces.as_ref()) {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
        let code = run(cli.command).await;
        telemetry::traces::shutdown();
        code
    })
}

/// Trace export settings: from the config file in standalone mode (read early, since
/// logging starts before the file is validated), from flags in the controller.
fn trace_settings(command: &Command) -> Option<TracingConfig> {
    match command {
        Command::Serve { config } => quic_ingress::config::load(config).ok()?.telemetry.tracing,
        Command::Controller { otlp_endpoint: Some(endpoint), trace_sampling_ratio, .. } => {
            Some(TracingConfig { endpoint: endpoint.clone(), sampling_ratio: *trace_sampling_ratio })
        }
        _ => None,
    }
}

async fn run(command: Command) -> ExitCode {
    match command {
        Command::Serve { config } => match quic_ingress::serve::run(&config).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "quic-ingress stopped");
                eprintln!("error: {e}");
                ExitCode::from(e.exit_code())
            }
        },
        Command::Controller {
            kubeconfig,
            ingress_class,
            namespace,
            publish_service,
            publish_address,
            listen,
            admin_listen,
            alt_svc_port,
            default_cert,
            default_key,
            drain_timeout,
            otlp_endpoint: _,
            trace_sampling_ratio: _,
            early_data,
            ticket_key_secret,
            congestion_control,
            trusted_proxies,
            debug_routes_from_anywhere,
        } => {
            let ticket_key_secret = match ticket_key_secret.as_deref().map(|s| s.split_once('/')) {
                None => None,
                Some(Some((ns, name))) if !ns.is_empty() && !name.is_empty() => {
                    Some((ns.to_string(), name.to_string()))
                }
                Some(_) => {
                    eprintln!("error: --ticket-key-secret must be NAMESPACE/NAME");
                    return ExitCode::from(2);
                }
            };
            if early_data == Some(true) && ticket_key_secret.is_some() {
                eprintln!(
                    "error: --early-data true needs single-use sessions kept by each replica, which \
                     --ticket-key-secret replaces; drop one of them"
                );
                return ExitCode::from(2);
            }
            let publish = match (publish_service, publish_address) {
                (Some(svc), _) => match svc.split_once('/') {
                    Some((ns, name)) if !ns.is_empty() && !name.is_empty() => Publish::Service(ns.into(), name.into()),
                    _ => {
                        eprintln!("error: --publish-service must be NAMESPACE/NAME, got {svc:?}");
                        return ExitCode::from(2);
                    }
                },
                (None, Some(addr)) => Publish::Address(addr),
                (None, None) => Publish::None,
            };
            let opts = ControllerOptions {
                kubeconfig,
                ingress_class,
                namespace,
                publish,
                listen,
                admin_listen,
                alt_svc_port,
                default_cert: default_cert.zip(default_key),
                drain_timeout,
                early_data: early_data.unwrap_or(true),
                ticket_key_secret,
                congestion: congestion_control,
                trusted_proxies: quic_ingress::net::TrustedProxies::new(trusted_proxies),
                debug_routes_from_anywhere,
            };
            match controller::run(opts).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "controller stopped");
                    eprintln!("error: {e}");
                    ExitCode::from(e.exit_code())
                }
            }
        }
        Command::Crd => match quic_ingress::kube::crd::crd_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: cannot render the CRD: {e}");
                ExitCode::from(1)
            }
        },
        Command::CheckConfig { file } => match quic_ingress::serve::check(
            &file,
            &quic_ingress::upstream::EndpointRegistry::default(),
            0,
            quic_ingress::serve::DefaultCert::Skip,
        ) {
            Ok(checked) => {
                println!(
                    "{}: ok ({} routes, {} backend groups)",
                    file.display(),
                    checked.config.routes.len(),
                    checked.config.backend_groups.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(e.exit_code())
            }
        },
        Command::DemoBackend { listen, name, protocol } => match demo_backend::run(listen, name, protocol).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: demo backend on {listen}: {e}");
                ExitCode::from(1)
            }
        },
        Command::Get {
            url,
            insecure,
            cacert,
            http3: _,
            http2,
            http1,
            method,
            headers,
            data,
            include,
            connect_to,
            early_data,
        } => {
            let trust = TrustOptions { insecure, ca_file: cacert };
            let version = if http2 {
                http::Version::HTTP_2
            } else if http1 {
                http::Version::HTTP_11
            } else {
                http::Version::HTTP_3
            };
            let request =
                GetRequest { url: &url, method: &method, headers: &headers, data, include, connect_to, early_data };
            match get(request, &trust, version).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

/// What `get` was asked to send.
struct GetRequest<'a> {
    url: &'a str,
    method: &'a str,
    headers: &'a [String],
    data: Option<String>,
    include: bool,
    connect_to: Option<SocketAddr>,
    early_data: bool,
}

async fn get(r: GetRequest<'_>, trust: &TrustOptions, version: http::Version) -> anyhow::Result<()> {
    let GetRequest { url, method, headers, data, include, connect_to, early_data } = r;
    let (addr, host, uri) = match connect_to {
        Some(addr) => {
            let uri: http::Uri = url.parse().with_context(|| format!("bad URL {url:?}"))?;
            let host = uri.host().context("the URL has no host")?.trim_matches(['[', ']']).to_string();
            (addr, host, uri)
        }
        None => client::target(url).await?,
    };
    let mut req = http::Request::builder().method(method).uri(uri.clone());
    for h in headers {
        let (name, value) = h.split_once(':').with_context(|| format!("header {h:?} is not `Name: value`"))?;
        req = req.header(name.trim(), value.trim());
    }
    let req = req.body(()).context("building the request")?;
    let body_of =
        |data: &Option<String>| data.clone().map(|d| RequestBody::Bytes(d.into())).unwrap_or(RequestBody::Empty);
    let body = body_of(&data);
    let mut resp = if early_data {
        let connector = client::H3Connector::new(trust, addr.is_ipv6(), true)?;
        let first = connector.connect(addr, &host).await?;
        // A response on the first connection means its session ticket has arrived too.
        let head = http::Request::head(uri.clone()).body(()).context("building the request")?;
        first.request(head, RequestBody::Empty).await?.bytes().await?;
        let (resumed, accepted) = connector.connect_early(addr, &host).await?;
        let again = req.clone();
        let sent = resumed.request(req, body).await;
        let accepted = match accepted {
            Some(accepted) => Some(accepted.await),
            None => None,
        };
        eprintln!(
            "0-RTT: {}",
            match accepted {
                Some(true) => "accepted",
                Some(false) => "rejected (the request is sent again after the handshake)",
                None => "not offered (no resumable session ticket)",
            }
        );
        match sent {
            // Streams opened in rejected early data fail; the connection itself carries on.
            Err(_) if accepted == Some(false) => resumed.request(again, body_of(&data)).await?,
            sent => sent?,
        }
    } else if version == http::Version::HTTP_3 {
        H3Client::connect(addr, &host, trust).await?.request(req, body).await?
    } else {
        client::request_tcp(addr, &host, trust, version, req, body).await?
    };
    println!("{:?} {}", resp.version, resp.status);
    if include {
        for (k, v) in &resp.headers {
            println!("{k}: {}", String::from_utf8_lossy(v.as_bytes()));
        }
    }
    println!();
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    while let Some(chunk) = resp.chunk().await? {
        out.write_all(&chunk)?;
    }
    out.flush()?;
    Ok(())
}
