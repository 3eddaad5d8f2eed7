//! The `quic-ingress` command line: parses arguments, sets up logging, and maps errors to
//! the exit codes of SPEC.md (0 ok, 1 runtime failure, 2 bad usage or configuration).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

// Every request allocates (headers, bodies, tasks); mimalloc's thread-local free lists cost
// a fraction of glibc's and musl's malloc, which a profile showed at a fifth of the CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use clap::{Parser, Subcommand};
use quic_ingress::client::{self, H3Client, RequestBody, TrustOptions};
use quic_ingress::demo_backend::{self, DemoProtocol};
use quic_ingress::kube::controller::{self, ControllerOptions};
use quic_ingress::kube::ownership::HostOwnership;
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
    /// Threads of the async runtime that serves traffic and runs the controller (default:
    /// the CPUs this process may use, cgroup quota included). Fewer than the cores free
    /// the rest for neighbours, and save the cost of handing work between threads.
    #[arg(long, global = true, env = "QUIC_INGRESS_WORKER_THREADS")]
    worker_threads: Option<std::num::NonZeroUsize>,
    #[command(subcommand)]
    command: Command,
}

/// `--gateway-addresses`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum GatewayAddresses {
    Shared,
    PerGateway,
}

// Parsed once at start-up; boxing the controller's flags would buy nothing.
#[allow(clippy::large_enum_variant)]
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
        /// Watch only these namespaces (repeat the flag or separate them with commas; all
        /// namespaces when omitted). RBAC then needs Roles in them only.
        #[arg(long = "namespace", value_name = "NS", value_delimiter = ',')]
        namespaces: Vec<String>,
        /// Namespace of the leader-election Lease (default: the watched namespace when there
        /// is one, else the pod's namespace, POD_NAMESPACE).
        #[arg(long)]
        lease_namespace: Option<String>,
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
        /// `namespace`: the first namespace to claim a host owns it, other namespaces'
        /// rules for it are refused; `none`: no ownership (single-tenant clusters).
        #[arg(long, default_value = "namespace", value_parser = |s: &str| s.parse::<HostOwnership>())]
        host_ownership: HostOwnership,
        /// The cluster's Service range(s), refused as static BackendGroup backends
        /// (repeatable; default kubeadm's 10.96.0.0/12).
        #[arg(long = "service-cidr", value_name = "CIDR", default_values = quic_ingress::kube::policy::DEFAULT_SERVICE_CIDRS)]
        service_cidrs: Vec<quic_ingress::kube::policy::Cidr>,
        /// The cluster's pod range(s), refused as static BackendGroup backends
        /// (repeatable; default 10.244.0.0/16).
        #[arg(long = "pod-cidr", value_name = "CIDR", default_values = quic_ingress::kube::policy::DEFAULT_POD_CIDRS)]
        pod_cidrs: Vec<quic_ingress::kube::policy::Cidr>,
        /// Ranges static BackendGroup backends may use although refused otherwise
        /// (loopback, link-local, metadata, Service and pod ranges); repeatable.
        #[arg(long = "allow-backend-cidr", value_name = "CIDR")]
        allow_backend_cidrs: Vec<quic_ingress::kube::policy::Cidr>,
        /// A proxy or load balancer in front (address or CIDR range) whose X-Forwarded-For
        /// and Forwarded are believed; repeat for several. From anyone else they are replaced.
        #[arg(long = "trusted-proxy", value_name = "CIDR")]
        trusted_proxies: Vec<quic_ingress::net::Cidr>,
        /// Also serve plaintext HTTP (HTTP/1.1, and HTTP/2 with prior knowledge) on this TCP
        /// address, e.g. 0.0.0.0:8080. Off unless given.
        #[arg(long, value_name = "ADDR")]
        http_listen: Option<SocketAddr>,
        /// The port clients reach the plaintext listener on (its Service port, behind a
        /// load balancer): Gateway listeners of protocol HTTP on this port are served.
        /// Defaults to the port of --http-listen.
        #[arg(long, value_name = "PORT", requires = "http_listen")]
        http_service_port: Option<u16>,
        /// Also serve the routes of Gateway listeners of protocol HTTP on the TLS listeners
        /// (HTTP/3 has no plaintext form). For running the Gateway API conformance suite
        /// over HTTP/3; leave off in production, where it would serve those routes on
        /// HTTPS under the default certificate.
        #[arg(long)]
        gateway_http_over_h3: bool,
        /// The `spec.controllerName` of the GatewayClasses this controller serves, and the
        /// name its status entries carry. Two installations in one cluster need names of
        /// their own (a domain prefix and a path, e.g. `example.com/edge`), or each takes
        /// the other's Gateways and overwrites their status.
        #[arg(long, value_name = "NAME", default_value = quic_ingress::kube::gateway::GATEWAY_CONTROLLER_NAME)]
        gateway_controller_name: String,
        #[command(flatten)]
        gateway: GatewayAddressFlags,
        /// Connections from --trusted-proxy peers to the TCP listeners must start with a
        /// PROXY protocol header (v2 or v1) naming the client; others are served as they are.
        #[arg(long)]
        proxy_protocol: bool,
        /// Serve /debug/routes (every tenant's hosts and backends) to any peer of the admin
        /// address; by default only loopback peers (kubectl port-forward) get it.
        #[arg(long)]
        debug_routes_from_anywhere: bool,
        /// With --ticket-key-secret: the leader creates the Secret if it is missing and puts a
        /// new key first on this schedule, keeping older keys for a ticket lifetime (12 h).
        /// Off unless given.
        #[arg(long, value_parser = parse_duration, requires = "ticket_key_secret")]
        ticket_key_rotation: Option<std::time::Duration>,
        /// With --ticket-key-secret: how long clients may keep a session ticket (at most 7
        /// days); with --ticket-key-rotation, keys are kept this long after they stop sealing.
        #[arg(long, value_parser = parse_duration, requires = "ticket_key_secret")]
        ticket_lifetime: Option<std::time::Duration>,
        #[command(flatten)]
        limits: Box<LimitFlags>,
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

/// The controller's `--limit-*` flags: `server.limits` of the standalone file, each
/// defaulting to the same value.
/// Per-Gateway addresses.
#[derive(clap::Args)]
struct GatewayAddressFlags {
    /// Where Gateways of our GatewayClasses are reached: `shared`, every one on the
    /// published address; `per-gateway`, each accepted Gateway on an address of its
    /// own, a Service the leader creates in the namespace of --publish-service (same
    /// type and selector), mapping the Gateway's listener ports to data-plane ports of
    /// its own from --gateway-port-range. Needs --publish-service.
    #[arg(long, value_enum, default_value = "shared")]
    gateway_addresses: GatewayAddresses,
    /// The data-plane ports of per-Gateway addresses, FIRST-LAST, two per Gateway
    /// (TLS on TCP and UDP, plaintext on TCP).
    #[arg(long, value_name = "FIRST-LAST", default_value = "20000-20999",
          value_parser = |s: &str| quic_ingress::kube::gateway::addresses::PortRange::parse(s))]
    gateway_port_range: quic_ingress::kube::gateway::addresses::PortRange,
}

#[derive(clap::Args)]
struct LimitFlags {
    /// Largest request header section in bytes (HTTP/3 field section, HTTP/2 header list) [default: 65536].
    #[arg(long)]
    limit_max_header_bytes: Option<u64>,
    /// Deadline for a request's headers [default: 10s].
    #[arg(long, value_parser = parse_duration)]
    limit_header_timeout: Option<std::time::Duration>,
    /// Deadline for QUIC and TLS handshakes [default: 10s].
    #[arg(long, value_parser = parse_duration)]
    limit_handshake_timeout: Option<std::time::Duration>,
    /// Send QUIC Retry to new clients once this many handshakes are in progress; 0: always [default: 128].
    #[arg(long)]
    limit_retry_above_handshakes: Option<u32>,
    /// File with the key sealing QUIC Retry tokens, shared by replicas (32+ bytes, raw or base64).
    #[arg(long)]
    limit_retry_token_key_file: Option<PathBuf>,
    /// Open connections, in total [default: 20000].
    #[arg(long)]
    limit_max_connections: Option<u32>,
    /// Open connections from one IP address [default: 500].
    #[arg(long)]
    limit_max_connections_per_ip: Option<u32>,
    /// Handshakes in progress, in total [default: 2000].
    #[arg(long)]
    limit_max_handshakes: Option<u32>,
    /// Handshakes in progress from one IP address [default: 50].
    #[arg(long)]
    limit_max_handshakes_per_ip: Option<u32>,
    /// QUIC receive window of one stream, bytes [default: 262144].
    #[arg(long)]
    limit_quic_stream_receive_window: Option<u32>,
    /// QUIC receive window of one connection, bytes [default: 4194304].
    #[arg(long)]
    limit_quic_connection_receive_window: Option<u32>,
    /// Close connections with nothing in flight for this long [default: 60s].
    #[arg(long, value_parser = parse_duration)]
    limit_idle_timeout: Option<std::time::Duration>,
    /// Close an HTTP/1.1 keep-alive connection waiting this long for its next request [default: 75s].
    #[arg(long, value_parser = parse_duration)]
    limit_http1_keep_alive_idle: Option<std::time::Duration>,
    /// HTTP/2 PING interval [default: 30s].
    #[arg(long, value_parser = parse_duration)]
    limit_http2_keep_alive_interval: Option<std::time::Duration>,
    /// How long an HTTP/2 PING may go unanswered [default: 20s].
    #[arg(long, value_parser = parse_duration)]
    limit_http2_keep_alive_timeout: Option<std::time::Duration>,
    /// Cut off a request body silent for this long [default: 30s].
    #[arg(long, value_parser = parse_duration)]
    limit_request_body_idle_timeout: Option<std::time::Duration>,
    /// Drop a client that takes nothing of a response for this long [default: 30s].
    #[arg(long, value_parser = parse_duration)]
    limit_response_write_timeout: Option<std::time::Duration>,
    /// Close a WebSocket tunnel idle for this long [default: 600s].
    #[arg(long, value_parser = parse_duration)]
    limit_upgrade_idle_timeout: Option<std::time::Duration>,
    /// Largest request body in bytes (413 beyond) [default: 1073741824].
    #[arg(long)]
    limit_max_request_body_bytes: Option<u64>,
}

impl LimitFlags {
    /// The limits the flags give, each unset one at its default.
    fn limits(self) -> quic_ingress::config::Limits {
        use quic_ingress::config::HumanDuration as D;
        let d = quic_ingress::config::Limits::default();
        quic_ingress::config::Limits {
            max_header_bytes: self.limit_max_header_bytes.unwrap_or(d.max_header_bytes),
            header_timeout: self.limit_header_timeout.map_or(d.header_timeout, D),
            handshake_timeout: self.limit_handshake_timeout.map_or(d.handshake_timeout, D),
            retry_above_handshakes: self.limit_retry_above_handshakes.unwrap_or(d.retry_above_handshakes),
            retry_token_key_file: self.limit_retry_token_key_file.or(d.retry_token_key_file),
            max_connections: self.limit_max_connections.unwrap_or(d.max_connections),
            max_connections_per_ip: self.limit_max_connections_per_ip.unwrap_or(d.max_connections_per_ip),
            max_handshakes: self.limit_max_handshakes.unwrap_or(d.max_handshakes),
            max_handshakes_per_ip: self.limit_max_handshakes_per_ip.unwrap_or(d.max_handshakes_per_ip),
            quic_stream_receive_window: self.limit_quic_stream_receive_window.unwrap_or(d.quic_stream_receive_window),
            quic_connection_receive_window: self
                .limit_quic_connection_receive_window
                .unwrap_or(d.quic_connection_receive_window),
            idle_timeout: self.limit_idle_timeout.map_or(d.idle_timeout, D),
            http1_keep_alive_idle: self.limit_http1_keep_alive_idle.map_or(d.http1_keep_alive_idle, D),
            http2_keep_alive_interval: self.limit_http2_keep_alive_interval.map_or(d.http2_keep_alive_interval, D),
            http2_keep_alive_timeout: self.limit_http2_keep_alive_timeout.map_or(d.http2_keep_alive_timeout, D),
            request_body_idle_timeout: self.limit_request_body_idle_timeout.map_or(d.request_body_idle_timeout, D),
            response_write_timeout: self.limit_response_write_timeout.map_or(d.response_write_timeout, D),
            upgrade_idle_timeout: self.limit_upgrade_idle_timeout.map_or(d.upgrade_idle_timeout, D),
            max_request_body_bytes: self.limit_max_request_body_bytes.unwrap_or(d.max_request_body_bytes),
        }
    }
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    quic_ingress::config::parse_duration(s)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let quiet = matches!(cli.command, Command::Get { .. } | Command::CheckConfig { .. } | Command::Crd);
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = cli.worker_threads {
        runtime.worker_threads(threads.get());
    }
    let runtime = match runtime.enable_all().build() {
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
            namespaces,
            lease_namespace,
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
            host_ownership,
            service_cidrs,
            pod_cidrs,
            allow_backend_cidrs,
            trusted_proxies,
            http_listen,
            http_service_port,
            gateway_http_over_h3,
            gateway_controller_name,
            gateway,
            proxy_protocol,
            debug_routes_from_anywhere,
            ticket_key_rotation,
            ticket_lifetime,
            limits,
        } => {
            let limits = limits.limits();
            let problems = limits.validate("--limit");
            if !problems.is_empty() {
                for p in problems {
                    // `--limit.max_header_bytes` reads as the flag `--limit-max-header-bytes`.
                    eprintln!("error: {}: {}", p.field.replace(['.', '_'], "-"), p.message);
                }
                return ExitCode::from(2);
            }
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
            let scope = match quic_ingress::kube::watches::Scope::from_names(&namespaces) {
                Ok(scope) => scope,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let lifetime = ticket_lifetime.unwrap_or_else(quic_ingress::kube::ticket_keys::default_lifetime);
            let tickets = quic_ingress::kube::ticket_keys::check_lifetime(lifetime).and_then(|secs| {
                let rotation = ticket_key_rotation.filter(|d| !d.is_zero());
                let rotation = rotation
                    .map(|every| quic_ingress::kube::ticket_keys::Rotation::new(every, lifetime))
                    .transpose()?;
                Ok((secs, rotation))
            });
            let (ticket_lifetime, ticket_key_rotation) = match tickets {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
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
            let per_gateway = gateway.gateway_addresses == GatewayAddresses::PerGateway;
            if per_gateway && !matches!(publish, Publish::Service(..)) {
                eprintln!("error: --gateway-addresses per-gateway needs --publish-service (its type and selector)");
                return ExitCode::from(2);
            }
            // A Gateway given a port another listener holds would never be served there.
            let taken =
                [("--listen", Some(listen)), ("--admin-listen", Some(admin_listen)), ("--http-listen", http_listen)];
            if let Some((flag, addr)) = taken.iter().find_map(|(flag, a)| {
                a.filter(|a| per_gateway && gateway.gateway_port_range.contains(a.port())).map(|a| (flag, a))
            }) {
                eprintln!(
                    "error: --gateway-port-range {} holds the port of {flag} {addr}; choose a range apart from the listeners",
                    gateway.gateway_port_range
                );
                return ExitCode::from(2);
            }
            let opts = ControllerOptions {
                kubeconfig,
                ingress_class,
                scope,
                lease_namespace,
                publish,
                listen,
                admin_listen,
                alt_svc_port,
                http_service_port: http_service_port.or(http_listen.map(|a| a.port())),
                gateway_http_over_h3,
                gateway_controller_name,
                gateway_port_range: per_gateway.then_some(gateway.gateway_port_range),
                default_cert: default_cert.zip(default_key),
                drain_timeout,
                early_data: early_data.unwrap_or(true),
                ticket_key_secret,
                congestion: congestion_control,
                host_ownership,
                backend_policy: quic_ingress::kube::policy::BackendPolicy::new(
                    &service_cidrs,
                    &pod_cidrs,
                    &allow_backend_cidrs,
                ),
                trusted_proxies: quic_ingress::net::TrustedProxies::new(trusted_proxies),
                debug_routes_from_anywhere,
                ticket_key_rotation,
                ticket_lifetime,
                limits,
                tcp: quic_ingress::proxy::TcpOptions { http_listen, proxy_protocol },
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
