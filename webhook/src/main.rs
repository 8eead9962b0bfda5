//! `ipmgr-webhook`: parse arguments, wire the adapters, run.

use std::io::Read as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use ipmgr_contract::LogArgs;
use ipmgr_webhook::certs::{ServiceIdentity, write_for_kustomize};
use ipmgr_webhook::config::{self, InjectionArgs, NetworkResourceArgs, NetworkResources};
use ipmgr_webhook::kube_api::ApiClient;
use ipmgr_webhook::managed::args::ManagedArgs;
use ipmgr_webhook::managed::store::KubeStore;
use ipmgr_webhook::manifest::{ReportResult, inject_yaml};
use ipmgr_webhook::network_definitions::ApiDefinitions;
use ipmgr_webhook::network_definitions::files::DefinitionFiles;
use ipmgr_webhook::server::{AppState, RequestLimits, ServeLimits, serve_tls};
use ipmgr_webhook::tls::ServingCertificate;
use tokio::net::TcpListener;

#[derive(Parser, Debug)]
#[command(
    name = "ipmgr-webhook",
    version,
    about = "Injects the multus-ipmgr helper into Multus pods"
)]
struct Cli {
    /// Log settings, the same as the helper's.
    #[command(flatten)]
    log: LogArgs,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the mutating admission webhook over HTTPS.
    Serve(Box<ServeArgs>),
    /// Print manifests with the helper injected, as the webhook would (no cluster needed).
    Inject(Box<InjectArgs>),
    /// Generate a CA and a serving certificate for the webhook Service, for kustomize.
    Certs(CertsArgs),
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "IPMGR_LISTEN", default_value = "0.0.0.0:8443")]
    listen: SocketAddr,

    /// Where the serving certificate comes from: `files` (--tls-cert and --tls-key, re-read
    /// when they change) or `managed` (a CA and certificate the webhook keeps in a Secret,
    /// renews, and puts into its MutatingWebhookConfiguration's caBundle itself).
    #[arg(long, env = "IPMGR_CERTIFICATES", value_enum, default_value_t = CertificateSource::Files)]
    certificates: CertificateSource,

    #[command(flatten)]
    managed: ManagedArgs,

    /// PEM certificate chain (re-read when it changes; `--certificates files`).
    #[arg(
        long,
        env = "IPMGR_TLS_CERT",
        default_value = "/etc/ipmgr-webhook/tls/tls.crt"
    )]
    tls_cert: PathBuf,

    /// PEM private key (re-read when it changes; `--certificates files`).
    #[arg(
        long,
        env = "IPMGR_TLS_KEY",
        default_value = "/etc/ipmgr-webhook/tls/tls.key"
    )]
    tls_key: PathBuf,

    /// Largest accepted request body, in bytes; larger ones get HTTP 413 (a larger declared
    /// Content-Length before anything is read).
    #[arg(long, env = "IPMGR_MAX_BODY_BYTES", default_value_t = 3 * 1024 * 1024)]
    max_body_bytes: usize,

    /// /mutate requests answered at once; further ones get HTTP 503 at once. Memory use is
    /// bounded by about 2 x max-in-flight x max-body-bytes.
    #[arg(long, env = "IPMGR_MAX_IN_FLIGHT", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    max_in_flight: u32,

    /// Open client connections; further clients wait in the listen backlog.
    #[arg(long, env = "IPMGR_MAX_CONNECTIONS", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,

    /// Seconds a client has for the TLS handshake, then for each HTTP/1.1 request's headers
    /// (also how long a kept-alive HTTP/1.1 connection waits for its next request).
    #[arg(long, env = "IPMGR_HEADER_TIMEOUT_SECONDS", default_value = "2", value_parser = config::seconds)]
    header_timeout_seconds: Duration,

    /// Seconds a request body may take to arrive once its headers did (HTTP 408 after).
    #[arg(long, env = "IPMGR_BODY_TIMEOUT_SECONDS", default_value = "3", value_parser = config::seconds)]
    body_timeout_seconds: Duration,

    /// Seconds from a request's headers to its answer, body included (HTTP 503 after).
    #[arg(long, env = "IPMGR_REQUEST_TIMEOUT_SECONDS", default_value = "4", value_parser = config::seconds)]
    request_timeout_seconds: Duration,

    /// Seconds a connection may stay without a request in flight before it is closed.
    #[arg(long, env = "IPMGR_IDLE_TIMEOUT_SECONDS", default_value = "5", value_parser = config::seconds)]
    idle_timeout_seconds: Duration,

    /// Seconds between HTTP/2 keep-alive pings, and for the answer to one.
    #[arg(long, env = "IPMGR_H2_KEEPALIVE_SECONDS", default_value = "5", value_parser = config::seconds)]
    h2_keepalive_seconds: Duration,

    /// Concurrent HTTP/2 streams per connection.
    #[arg(long, env = "IPMGR_H2_MAX_CONCURRENT_STREAMS", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    h2_max_concurrent_streams: u32,

    /// Seconds in-flight requests get to finish after SIGTERM.
    #[arg(long, env = "IPMGR_DRAIN_SECONDS", default_value_t = 10)]
    drain_seconds: u64,

    #[command(flatten)]
    injection: InjectionArgs,

    #[command(flatten)]
    network: NetworkResourceArgs,

    /// Seconds a NetworkAttachmentDefinition read from the API server is kept (0: read each
    /// time); one that is missing is never kept.
    #[arg(long, env = "IPMGR_NAD_CACHE_SECONDS", default_value = "30", value_parser = config::seconds_or_zero)]
    nad_cache_seconds: Duration,
}

/// Where the serving certificate comes from.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum CertificateSource {
    /// PEM files, mounted from a Secret (kustomize, cert-manager, existingSecret).
    Files,
    /// A Secret the webhook keeps itself.
    Managed,
}

#[derive(clap::Args, Debug)]
struct InjectArgs {
    /// Manifest file (multi-document YAML or JSON), or - for standard input.
    #[arg(short = 'f', long = "filename", env = "IPMGR_INJECT_FILE")]
    file: PathBuf,

    #[command(flatten)]
    injection: InjectionArgs,

    #[command(flatten)]
    network: NetworkResourceArgs,

    /// Files (YAML or JSON) with the NetworkAttachmentDefinitions the pods' networks name,
    /// for their resource requests (comma-separated in the env var); none: no requests.
    #[arg(
        long = "network-attachment-definitions",
        env = "IPMGR_NETWORK_ATTACHMENT_DEFINITIONS",
        value_delimiter = ','
    )]
    network_attachment_definitions: Vec<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct CertsArgs {
    /// Directory for tls.crt, tls.key, ca.crt and cabundle-patch.yaml.
    #[arg(long, env = "IPMGR_CERTS_OUT_DIR", default_value = "manifests/tls")]
    out_dir: PathBuf,

    /// Name of the webhook Service.
    #[arg(long, env = "IPMGR_CERTS_SERVICE", default_value = "ipmgr-webhook")]
    service: String,

    /// Namespace of the webhook Service.
    #[arg(long, env = "IPMGR_CERTS_NAMESPACE", default_value = "multus-ipmgr")]
    namespace: String,

    /// Validity of the CA and the certificate, in days.
    #[arg(long, env = "IPMGR_CERTS_DAYS", default_value_t = 365)]
    days: u32,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    cli.log.init()?;
    match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Inject(args) => inject(&args),
        Command::Certs(args) => certs(&args),
    }
}

fn serve(args: ServeArgs) -> Result<()> {
    let settings = args
        .injection
        .settings()
        .context("invalid helper settings")?;
    let managed = args.certificates == CertificateSource::Managed;
    let managed_settings = args.managed.settings();
    let certificate = Arc::new(if managed {
        ServingCertificate::installed(managed_settings.ready_while_confirmed_within())
    } else {
        ServingCertificate::from_files(args.tls_cert.clone(), args.tls_key.clone())
    });
    if !managed && !certificate.is_loaded() {
        tracing::warn!(
            cert = %args.tls_cert.display(),
            key = %args.tls_key.display(),
            "no serving certificate yet; not ready until the files are valid"
        );
    }
    let tls = certificate
        .server_config()
        .context("cannot build the TLS configuration")?;
    let mut state = AppState::new(
        settings,
        Some(certificate.clone()),
        RequestLimits {
            max_body_bytes: args.max_body_bytes,
            max_in_flight: args.max_in_flight as usize,
            body_timeout: args.body_timeout_seconds,
            request_timeout: args.request_timeout_seconds,
        },
    );
    // The Kubernetes API configuration, read once for whichever of the two needs it.
    let api = (managed || args.network.network_resources != NetworkResources::Off)
        .then(|| ApiClient::from_environment().map_err(Arc::new));
    let definitions_client = match (args.network.network_resources, api.clone()) {
        (NetworkResources::Off, _) | (_, None) => None,
        (NetworkResources::On, Some(client)) => Some(client.context(
            "cannot configure the Kubernetes API for reading NetworkAttachmentDefinitions \
             (--network-resources): give the webhook a service account token that may get \
             them, or set --network-resources=false (IPMGR_NETWORK_RESOURCES)",
        )?),
        (NetworkResources::Auto, Some(Ok(client))) => Some(client),
        (NetworkResources::Auto, Some(Err(error))) => {
            tracing::warn!(
                %error,
                "no Kubernetes API configuration: injected pods get no multus-ipmgr.io/ \
                 resource requests (capacity-aware scheduling off); give the webhook a \
                 service account token that may get network-attachment-definitions, or \
                 set --network-resources=false (IPMGR_NETWORK_RESOURCES) to silence this"
            );
            None
        }
    };
    if let Some(client) = definitions_client {
        state = state.with_network_definitions(
            Box::new(ApiDefinitions::new(client)),
            args.nad_cache_seconds,
        );
    }
    let state = Arc::new(state);
    let limits = ServeLimits {
        header_timeout: args.header_timeout_seconds,
        idle_timeout: args.idle_timeout_seconds,
        h2_keep_alive: args.h2_keepalive_seconds,
        h2_max_concurrent_streams: args.h2_max_concurrent_streams,
        max_connections: args.max_connections as usize,
        drain_timeout: Duration::from_secs(args.drain_seconds),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let listener = TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {} (--listen / IPMGR_LISTEN)", args.listen))?;
        if managed {
            let client = api
                .unwrap_or_else(|| ApiClient::from_environment().map_err(Arc::new))
                .context("cannot configure the Kubernetes API for the managed certificates")?;
            let store = KubeStore::new(
                client,
                &args.managed.namespace,
                &args.managed.cert_secret,
                &args.managed.webhook_configuration,
            );
            let keeper = tokio::spawn(ipmgr_webhook::managed::keep(
                managed_settings,
                store,
                certificate.clone(),
            ));
            tokio::spawn(async {
                // keep() runs for ever: it ends only by a panic, and a webhook that keeps
                // serving without its keeper would serve a certificate nobody renews.
                let ended = keeper.await;
                tracing::error!(?ended, "the managed certificates' keeper ended; exiting");
                std::process::exit(1);
            });
        }
        tracing::info!(listen = %args.listen, "serving /mutate, /healthz, /readyz, /metrics over HTTPS");
        serve_tls(listener, tls, state, limits, shutdown_signal()).await;
        tracing::info!("stopped");
        Ok(())
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(error) => {
            tracing::warn!(%error, "cannot watch SIGTERM; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn inject(args: &InjectArgs) -> Result<()> {
    let settings = args
        .injection
        .settings()
        .context("invalid helper settings")?;
    let from_stdin = args.file.as_os_str() == "-";
    let source = if from_stdin {
        "standard input".to_owned()
    } else {
        args.file.display().to_string()
    };
    let input = if from_stdin {
        let mut input = String::new();
        std::io::stdin().read_to_string(&mut input).map(|_| input)
    } else {
        std::fs::read_to_string(&args.file)
    }
    .with_context(|| format!("cannot read {source}"))?;
    let requested = args.network.network_resources != NetworkResources::Off;
    let definitions = match args.network_attachment_definitions.as_slice() {
        paths if requested && !paths.is_empty() => Some(DefinitionFiles::read(paths)?),
        _ => None,
    };
    let (output, reports) = inject_yaml(&input, &settings, definitions.as_ref())
        .with_context(|| format!("cannot inject {source}"))?;
    for report in &reports {
        eprintln!("{report}");
    }
    let injected = reports
        .iter()
        .filter(|report| matches!(report.result, ReportResult::Injected(_)))
        .count();
    if requested && definitions.is_none() && injected > 0 {
        eprintln!(
            "note: no multus-ipmgr.io/ resource requests added to the {injected} injected \
             workload(s): give the NetworkAttachmentDefinitions their networks name with \
             --network-attachment-definitions FILE"
        );
    }
    print!("{output}");
    Ok(())
}

fn certs(args: &CertsArgs) -> Result<()> {
    let identity = ServiceIdentity {
        service: args.service.clone(),
        namespace: args.namespace.clone(),
        valid_days: args.days,
    };
    let certificates = identity.generate()?;
    for path in write_for_kustomize(&args.out_dir, &certificates)? {
        println!("wrote {}", path.display());
    }
    println!("certificate names: {}", identity.dns_names().join(", "));
    Ok(())
}
