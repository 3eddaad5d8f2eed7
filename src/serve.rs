//! Standalone mode (`quic-ingress serve --config FILE`): the data plane from a YAML file.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{self, Config, ConfigError, Listen};
use crate::proxy::{DataPlane, ListenError, ListenOptions, TcpOptions};
use crate::routes::CertSet;
use crate::routes::RouteTable;
use crate::telemetry::admin::{self, Readiness};
use crate::telemetry::metrics::Metrics;
use crate::tls::{self, TlsError};
use crate::upstream::{EndpointRegistry, HealthChecker};

/// Why standalone mode stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error("cannot bind the admin address {addr}: {source}")]
    Admin { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("metrics: {0}")]
    Metrics(String),
}

impl ServeError {
    /// Exit code per SPEC.md: 2 for invalid configuration, 1 for runtime failures.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Config(_) | Self::Tls(_) => 2,
            _ => 1,
        }
    }
}

/// A configuration that passed every check, compiled into a route table.
pub struct Checked {
    pub config: Config,
    pub listen: Listen,
    /// The server certificates the table carries.
    pub certs: CertSet,
    pub table: RouteTable,
    /// Session-ticket keys from `server.ticket_key_file`.
    pub ticket_keys: Option<tls::TicketKeys>,
}

impl Checked {
    /// How the listeners resume sessions under this configuration.
    fn resumption(&self) -> Result<tls::Resumption, ServeError> {
        Ok(match &self.ticket_keys {
            Some(keys) => tls::Resumption::SharedKeys(Arc::new(
                tls::SharedTicketer::new(keys).map_err(|e| TlsError::Key(format!("server.ticket_key_file: {e}")))?,
            )),
            None => tls::Resumption::single_use(self.config.server.early_data.unwrap_or(true)),
        })
    }
}

/// Which server certificate to use when the file names none.
pub enum DefaultCert {
    /// Generate a self-signed one (start-up).
    Generate,
    /// Keep the one already serving (reload), so clients that trust it keep working.
    Keep(CertSet),
    /// None (`check-config`).
    Skip,
}

/// Loads, validates and compiles `path` against `registry` (what `check-config` reports,
/// and what start-up and reloads publish).
pub fn check(
    path: &Path,
    registry: &EndpointRegistry,
    generation: u64,
    dev: DefaultCert,
) -> Result<Checked, ServeError> {
    let file = path.display().to_string();
    let mut config = config::load(path)?;
    // Like the certificate files, CA bundles are named relative to the config file.
    for group in &mut config.backend_groups {
        if let Some(ca) = &group.tls.ca_file {
            group.tls.ca_file = Some(resolve(path, ca));
        }
    }
    let listen = config.validate().map_err(|errors| ConfigError::Invalid { file: file.clone(), errors })?;
    let certs = match (&config.server.cert_file, &config.server.key_file, dev) {
        (Some(cert), Some(key), _) => {
            let key = tls::load_certified_key(&resolve(path, cert), &resolve(path, key)).map_err(|e| {
                ConfigError::Invalid {
                    file: file.clone(),
                    errors: vec![config::FieldError { field: "server.cert_file".into(), message: e.to_string() }],
                }
            })?;
            CertSet::with_default(key)
        }
        (_, _, DefaultCert::Keep(certs)) => certs,
        (_, _, DefaultCert::Skip) => CertSet::default(),
        (_, _, DefaultCert::Generate) => {
            let dev = tls::generate_dev_cert(&config.hosts(), &tls::dev_cert_dir())?;
            tracing::warn!(
                cert_file = %dev.cert_path.display(),
                key_file = %dev.key_path.display(),
                spki_sha256 = %dev.spki_sha256,
                "no server.cert_file: serving a self-signed development certificate"
            );
            CertSet::with_default(dev.key)
        }
    };
    let ticket_keys = match &config.server.ticket_key_file {
        Some(key_file) => {
            let keys = std::fs::read(resolve(path, key_file))
                .map_err(|e| e.to_string())
                .and_then(|bytes| tls::parse_ticket_keys(&bytes).map_err(|e| e.to_string()))
                .map_err(|message| ConfigError::Invalid {
                    file: file.clone(),
                    errors: vec![config::FieldError {
                        field: "server.ticket_key_file".into(),
                        message: format!("{}: {message}", key_file.display()),
                    }],
                })?;
            Some(keys)
        }
        None => None,
    };
    let build_started = std::time::Instant::now();
    let table =
        config.compile(registry, certs.clone(), generation).map_err(|errors| ConfigError::Invalid { file, errors })?;
    registry.metrics().record_table(table.generation, table.route_count(), build_started.elapsed());
    Ok(Checked { config, listen, certs, table, ticket_keys })
}

/// Relative paths in a config file are relative to the file.
fn resolve(config_path: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        config_path.parent().map(|d| d.join(p)).unwrap_or_else(|| p.to_path_buf())
    }
}

/// How often the config file is looked at for changes.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// Runs standalone mode until SIGTERM or SIGINT, then drains. SIGHUP or a change of the
/// file reloads the configuration; an invalid file is logged and the old one keeps serving.
pub async fn run(path: &Path) -> Result<(), ServeError> {
    let metrics = Arc::new(Metrics::new().map_err(|e| ServeError::Metrics(e.to_string()))?);
    let registry = Arc::new(EndpointRegistry::new(metrics.clone(), None));
    let checked = check(path, &registry, 1, DefaultCert::Generate)?;
    let resumption = checked.resumption()?;
    let Checked { config, listen, certs, table, .. } = checked;
    tracing::info!(routes = table.route_count(), groups = table.groups().count(), "route table loaded");
    // Health changes are logged by the endpoints; standalone mode has no one else to tell.
    let mut checker = HealthChecker::new(metrics.clone());
    checker.sync(table.groups());
    let tables = crate::proxy::tables(table);

    let ready = Arc::new(Readiness::default());
    let stop_admin = CancellationToken::new();
    admin::start(
        listen.admin_address,
        crate::proxy::debug_routes(&tables, config.telemetry.debug_routes_from_anywhere),
        ready.clone(),
        metrics.clone(),
        stop_admin.clone(),
    )
    .await
    .map_err(|source| ServeError::Admin { addr: listen.admin_address, source })?;

    let options = ListenOptions {
        address: listen.address,
        alt_svc_port: config.server.alt_svc_port,
        congestion: config.server.congestion_control,
        resumption,
        trusted_proxies: listen.trusted_proxies.clone(),
        limits: config.server.limits.clone(),
        tcp: TcpOptions { http_listen: listen.http_address, proxy_protocol: listen.proxy_protocol },
    };
    let plane = DataPlane::start(&options, tables, metrics).await?;
    ready.set(true);

    let mut reloader = Reloader {
        path: path.to_path_buf(),
        registry,
        dev_certs: certs,
        generation: 1,
        listen,
        seen: fingerprint(path),
        key_file: None,
        seen_key: None,
    };
    reloader.watch_key_file(&config);
    let drain = {
        use tokio::signal::unix::{SignalKind, signal};
        let signals = |kind| signal(kind).map_err(ServeError::Signals);
        let (mut term, mut int, mut hup) =
            (signals(SignalKind::terminate())?, signals(SignalKind::interrupt())?, signals(SignalKind::hangup())?);
        let mut poll = tokio::time::interval(WATCH_INTERVAL);
        let mut drain = config.server.drain_timeout.0;
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM received"); break drain }
                _ = int.recv() => { tracing::info!("SIGINT received"); break drain }
                _ = hup.recv() => {
                    tracing::info!("SIGHUP received: reloading");
                    if let Some(new_drain) = reloader.reload(&plane, &mut checker) { drain = new_drain; }
                }
                _ = poll.tick() => {
                    if reloader.changed() {
                        tracing::info!(file = %path.display(), "configuration or ticket key file changed: reloading");
                        if let Some(new_drain) = reloader.reload(&plane, &mut checker) { drain = new_drain; }
                    }
                }
            }
        }
    };

    ready.set(false);
    tracing::info!(timeout = ?drain, "shutting down: draining in-flight requests");
    let drained = plane.shutdown(drain).await;
    drop(checker);
    stop_admin.cancel();
    let _ = std::fs::remove_dir_all(tls::dev_cert_dir());
    if drained {
        tracing::info!("drained, exiting");
    } else {
        tracing::warn!("drain timeout reached with requests still in flight");
    }
    Ok(())
}

/// What identifies a version of the file: length, modification time and a hash of the
/// bytes (editors and ConfigMap updates may keep one of the first two).
fn fingerprint(path: &Path) -> Option<Fingerprint> {
    use std::hash::{Hash, Hasher};
    let meta = std::fs::metadata(path).ok()?;
    let bytes = std::fs::read(path).ok()?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    Some((meta.len(), meta.modified().ok(), h.finish()))
}

/// Reloads the configuration into the running data plane.
struct Reloader {
    path: PathBuf,
    registry: Arc<EndpointRegistry>,
    /// Certificates of the running config: kept when the new one names no files, so a
    /// development certificate clients trust stays the same across reloads.
    dev_certs: CertSet,
    generation: u64,
    listen: Listen,
    seen: Option<Fingerprint>,
    /// The session-ticket key file, watched too: a rotated key (a Kubernetes Secret
    /// mounted as a file, say) takes effect without a restart.
    key_file: Option<PathBuf>,
    seen_key: Option<Fingerprint>,
}

type Fingerprint = (u64, Option<std::time::SystemTime>, u64);

impl Reloader {
    fn changed(&mut self) -> bool {
        let mut changed = false;
        let now = fingerprint(&self.path);
        if now.is_some() && now != self.seen {
            self.seen = now;
            changed = true;
        }
        if let Some(key_file) = &self.key_file {
            let now = fingerprint(key_file);
            if now.is_some() && now != self.seen_key {
                self.seen_key = now;
                changed = true;
            }
        }
        changed
    }

    fn watch_key_file(&mut self, config: &Config) {
        self.key_file = config.server.ticket_key_file.as_ref().map(|k| resolve(&self.path, k));
        self.seen_key = self.key_file.as_deref().and_then(fingerprint);
    }

    /// Validates and publishes the file; returns the new drain timeout when it took effect.
    fn reload(&mut self, plane: &DataPlane, checker: &mut HealthChecker) -> Option<Duration> {
        let dev = DefaultCert::Keep(self.dev_certs.clone());
        let checked = match check(&self.path, &self.registry, self.generation + 1, dev) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "configuration rejected; the previous one keeps serving");
                return None;
            }
        };
        let Checked { config, listen, table, ticket_keys, .. } = checked;
        self.watch_key_file(&config);
        if listen.address != self.listen.address
            || listen.admin_address != self.listen.admin_address
            || listen.http_address != self.listen.http_address
            || listen.proxy_protocol != self.listen.proxy_protocol
        {
            tracing::warn!(
                "server.address, server.http_listen, server.proxy_protocol and telemetry.admin_address \
                 changes take effect on restart"
            );
        }
        match (plane.resumption(), &ticket_keys) {
            // Key rotation takes effect now: tickets sealed with dropped keys stop resuming.
            (tls::Resumption::SharedKeys(ticketer), Some(keys)) => {
                if let Err(e) = ticketer.set_keys(keys) {
                    tracing::error!(error = %e, "server.ticket_key_file: keys not replaced");
                }
            }
            (tls::Resumption::SingleUse { early_data, .. }, None)
                if *early_data == config.server.early_data.unwrap_or(true) => {}
            _ => tracing::warn!("server.ticket_key_file and server.early_data changes take effect on restart"),
        }
        self.generation += 1;
        checker.sync(table.groups());
        tracing::info!(generation = self.generation, routes = table.route_count(), "configuration reloaded");
        plane.publish(table);
        Some(config.server.drain_timeout.0)
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn wait_for_termination() -> Result<(), ServeError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(ServeError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(ServeError::Signals)?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    Ok(())
}
