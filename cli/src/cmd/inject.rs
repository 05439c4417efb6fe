//! `picket inject` (manifests in, manifests out) and `picket injector serve` (the admission
//! webhook). Both take the same settings and call the same [`picket_k8s::inject::inject`].

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use picket_ca::client::CaClient;
use picket_ca::{SpiffeId, TrustDomain};
use tokio_util::sync::CancellationToken;

use picket_common::Cidr;
use picket_k8s::inject::{self, ControllerSettings, Outcome, Settings};
use picket_k8s::webhook::{self, CertificateSource};

/// What the injector puts into pods (shared by `picket inject` and `picket injector serve`).
#[derive(Debug, Clone, clap::Args)]
pub struct SettingsArgs {
    /// The image of the sidecar: a tag other than `latest`, or a digest
    /// [default: picket/picket-sidecar:<this version>]. The `picket` image runs the same
    /// sidecar; `picket-sidecar` holds the sidecar alone.
    #[arg(long, value_parser = parse_image)]
    image: Option<String>,
    /// The image of the `picket iptables` init step (the picket binary with the iptables
    /// tools) [default: picket/picket-init:<this version>].
    #[arg(long, value_parser = parse_image)]
    init_image: Option<String>,
    /// imagePullPolicy of the injected containers.
    #[arg(long, value_enum, default_value_t = PullPolicy::IfNotPresent)]
    image_pull_policy: PullPolicy,
    /// The UID the sidecar runs as; the iptables rules exempt its traffic.
    #[arg(long, default_value_t = 1337, value_parser = clap::value_parser!(u32).range(1..))]
    proxy_uid: u32,
    /// The CA API as sidecars (and the webhook) reach it.
    #[arg(long, default_value = "https://picket-ca.picket.svc:7443")]
    ca_url: String,
    /// The mesh's trust domain.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: TrustDomain,
    /// The audience of the projected service-account token; the CA requires the same.
    #[arg(long, default_value = picket_ca::tokenreview::DEFAULT_AUDIENCE)]
    token_audience: String,
    /// Inbound ports that bypass the sidecar in every pod (comma-separated); the admin port
    /// 7191 always does.
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u16).range(1..))]
    exclude_inbound_ports: Vec<u16>,
    /// Outbound ports that bypass the sidecar in every pod (comma-separated).
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u16).range(1..))]
    exclude_outbound_ports: Vec<u16>,
    /// Outbound networks that bypass the sidecar in every pod (comma-separated CIDRs).
    #[arg(long, value_delimiter = ',')]
    exclude_outbound_cidrs: Vec<Cidr>,
    /// Destinations inside the mesh, carried over mTLS (comma-separated CIDRs: the cluster's
    /// pod and Service networks) [default: 10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fd00::/8].
    #[arg(long, value_delimiter = ',')]
    meshed_cidrs: Vec<Cidr>,
    /// Other destinations: `allow` passes them as plain TCP, `deny` refuses them.
    #[arg(long, value_enum, default_value_t = Egress::Allow)]
    egress: Egress,
    /// Passthrough to a cloud metadata address: `block` refuses it (and alerts), `alert` only
    /// alerts.
    #[arg(long, value_enum, default_value_t = Metadata::Block)]
    metadata: Metadata,
    /// The sidecar's CPU request.
    #[arg(long, default_value = "10m")]
    proxy_cpu_request: String,
    /// The sidecar's memory request.
    #[arg(long, default_value = "32Mi")]
    proxy_memory_request: String,
    /// Inbound mode of every pod: `strict` accepts mTLS only, `permissive` also plaintext
    /// (for a migration). A pod's `picket.dev/inbound-mode` annotation overrides it.
    #[arg(long, value_enum, default_value_t = Mode::Strict)]
    inbound_mode: Mode,
    /// Rewrite the app's kubelet probes to go through the sidecar's health listener
    /// (`picket.dev/rewrite-probes: "false"` turns it off for one pod).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    rewrite_probes: bool,
    /// Add `prometheus.io/scrape`, `/port` and `/path` annotations for the sidecar's metrics
    /// to pods that carry no `prometheus.io/*` annotation of their own.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    scrape_annotations: bool,
    /// `picket controller`'s discovery service as sidecars reach it (`host:port`, e.g.
    /// `picket-controller.picket.svc:7150`): the sidecars take their transparent destinations
    /// from it (cluster mode). Without it they run from their file alone.
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_host_port)]
    controller_address: Option<String>,
    /// The SPIFFE ID the controller must present, in the mesh's trust domain
    /// [default: spiffe://<trust-domain>/ns/picket/sa/picket-controller].
    #[arg(long, requires = "controller_address")]
    controller_identity: Option<SpiffeId>,
    /// Destination endpoints the controller says run no sidecar: `deny` refuses them,
    /// `plaintext` reaches them without TLS.
    #[arg(long, value_enum, default_value_t = Unmeshed::Deny)]
    unmeshed: Unmeshed,
}

/// What injected sidecars do with endpoints that run no sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Unmeshed {
    /// Refuse (HTTP 503, connection closed).
    Deny,
    /// Plain TCP to the endpoint.
    Plaintext,
}

/// The inbound mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    /// mTLS only.
    Strict,
    /// mTLS and plaintext.
    Permissive,
}

/// What happens to passthrough connections to a cloud metadata address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Metadata {
    /// Refuse, and alert.
    Block,
    /// Alert only.
    Alert,
}

/// What happens to destinations outside the meshed networks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Egress {
    /// Pass as plain TCP.
    Allow,
    /// Refuse.
    Deny,
}

/// `imagePullPolicy` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum PullPolicy {
    #[value(name = "IfNotPresent")]
    IfNotPresent,
    #[value(name = "Always")]
    Always,
    #[value(name = "Never")]
    Never,
}

/// `host:port` with a port from 1 to 65535 (a name, an IPv4 address or `[IPv6]`).
fn parse_host_port(address: &str) -> Result<String, String> {
    let bad = || format!("{address:?} is not host:port (a port from 1 to 65535)");
    let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
    let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let host_ok = rustls::pki_types::ServerName::try_from(host).is_ok();
    if port_ok && host_ok {
        Ok(address.to_owned())
    } else {
        Err(bad())
    }
}

impl SettingsArgs {
    fn settings(&self) -> anyhow::Result<Settings> {
        let mut settings = Settings::new(self.trust_domain.clone());
        if let Some(image) = &self.image {
            settings.image.clone_from(image);
        }
        if let Some(image) = &self.init_image {
            settings.init_image.clone_from(image);
        }
        settings.image_pull_policy = match self.image_pull_policy {
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Always => "Always",
            PullPolicy::Never => "Never",
        }
        .to_owned();
        settings.proxy_uid = self.proxy_uid;
        settings.ca_url.clone_from(&self.ca_url);
        settings.token_audience.clone_from(&self.token_audience);
        settings
            .exclude_inbound_ports
            .clone_from(&self.exclude_inbound_ports);
        settings
            .exclude_outbound_ports
            .clone_from(&self.exclude_outbound_ports);
        settings
            .exclude_outbound_cidrs
            .clone_from(&self.exclude_outbound_cidrs);
        if !self.meshed_cidrs.is_empty() {
            settings.meshed_cidrs.clone_from(&self.meshed_cidrs);
        }
        settings.egress_allowed = self.egress == Egress::Allow;
        settings.block_metadata = self.metadata == Metadata::Block;
        settings
            .proxy_cpu_request
            .clone_from(&self.proxy_cpu_request);
        settings
            .proxy_memory_request
            .clone_from(&self.proxy_memory_request);
        settings.permissive = self.inbound_mode == Mode::Permissive;
        settings.rewrite_probes = self.rewrite_probes;
        settings.scrape_annotations = self.scrape_annotations;
        settings.unmeshed_plaintext = self.unmeshed == Unmeshed::Plaintext;
        if let Some(address) = &self.controller_address {
            let identity = match &self.controller_identity {
                Some(id) => id.clone(),
                None => format!(
                    "spiffe://{}/ns/picket/sa/picket-controller",
                    self.trust_domain.as_str()
                )
                .parse()
                .context("the default controller identity")?,
            };
            anyhow::ensure!(
                identity.trust_domain() == &self.trust_domain,
                "--controller-identity {identity} is outside the trust domain {} (the sidecars refuse it)",
                self.trust_domain.as_str()
            );
            settings.controller = Some(ControllerSettings {
                address: address.clone(),
                identity,
            });
        }
        Ok(settings)
    }
}

/// An image reference with a tag other than `latest`, or a digest.
fn parse_image(image: &str) -> Result<String, String> {
    let name = image.rsplit('/').next().unwrap_or(image);
    if image.contains("@sha256:") {
        return Ok(image.to_owned());
    }
    match name.split_once(':') {
        Some((_, tag)) if !tag.is_empty() && tag != "latest" => Ok(image.to_owned()),
        _ => Err(format!(
            "{image:?} must name a version: use a tag other than `latest`, or a digest"
        )),
    }
}

/// Arguments of `picket inject`.
#[derive(Debug, clap::Args)]
pub struct InjectArgs {
    /// The manifests (multi-document YAML or JSON); `-` is standard input.
    #[arg(short = 'f', long = "filename", default_value = "-")]
    file: PathBuf,
    /// Take the sidecar out instead (reverses `picket inject` exactly).
    #[arg(long)]
    uninject: bool,
    /// The manifests out: text and yaml print multi-document YAML, json one JSON document
    /// (a `List` when there are several objects).
    #[command(flatten)]
    output: super::OutputArgs,
    #[command(flatten)]
    settings: SettingsArgs,
}

/// Runs `picket inject`: manifests from the file or standard input, the result on standard
/// output, one line per workload on standard error. Nothing is printed on standard output
/// unless every document could be handled.
pub fn run(args: InjectArgs) -> anyhow::Result<()> {
    let (source_name, text) = if args.file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read standard input")?;
        ("<stdin>".to_owned(), text)
    } else {
        let text = std::fs::read_to_string(&args.file)
            .with_context(|| format!("cannot read {}", args.file.display()))?;
        (args.file.display().to_string(), text)
    };
    let settings = args.settings.settings()?;
    let mut documents = inject::parse_manifests(&source_name, &text)?;
    let mut reports = Vec::new();
    for document in &mut documents {
        if args.uninject {
            reports.extend(inject::uninject(document)?);
        } else {
            reports.extend(inject::inject(document, &settings)?);
        }
    }
    let output = match args.output.output {
        super::Output::Text | super::Output::Yaml => inject::print_manifests(&documents)?,
        super::Output::Json => {
            let list = super::object_list(documents);
            super::Output::Json.render(&list, String::new)?
        }
    };
    let mut stderr = std::io::stderr().lock();
    for report in reports {
        let outcome = match report.outcome {
            Outcome::Injected => "injected".to_owned(),
            Outcome::Uninjected => "uninjected".to_owned(),
            Outcome::NotInjected => "not injected, left as it is".to_owned(),
            Outcome::Skipped(reason) => format!("skipped: {reason}"),
        };
        writeln!(stderr, "{}: {outcome}", report.workload)?;
    }
    super::print_stdout(&output)
}

/// `picket injector` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum InjectorCommand {
    /// Serve the mutating admission webhook over HTTPS until SIGTERM or SIGINT.
    Serve(ServeArgs),
}

/// Arguments of `picket injector serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "0.0.0.0:9443")]
    listen: SocketAddr,
    /// PEM roots that sign the CA's certificate (the trust bundle).
    #[arg(long, default_value = "/etc/picket/trust/bundle.pem")]
    trust_bundle_file: PathBuf,
    /// The bearer credential for the CA: the projected service-account token (audience
    /// picket-ca), re-read at every renewal, or a join token.
    #[arg(long, default_value = "/var/run/secrets/picket/token")]
    token_file: PathBuf,
    /// Once serving, write {"listen":"IP:PORT"} here (for supervisors and tests).
    #[arg(long)]
    ready_file: Option<PathBuf>,
    #[command(flatten)]
    settings: SettingsArgs,
}

/// Runs one `picket injector` subcommand.
pub async fn run_injector(cmd: InjectorCommand) -> anyhow::Result<()> {
    let InjectorCommand::Serve(args) = cmd;
    let settings = Arc::new(args.settings.settings()?);
    let trust = std::fs::read(&args.trust_bundle_file)
        .with_context(|| format!("cannot read {}", args.trust_bundle_file.display()))?;
    let ca = CaClient::new(&settings.ca_url, &trust).context("cannot set up the CA client")?;
    let source = CertificateSource {
        ca,
        token_file: args.token_file,
        trust_file: args.trust_bundle_file,
    };
    let shutdown = CancellationToken::new();
    super::cancel_on_signal(shutdown.clone())?;
    let (listener, local) = super::bind(args.listen).await?;
    let mut ready_error = None;
    let ready_file = args.ready_file;
    webhook::serve(listener, settings, source, shutdown, || {
        if let Some(path) = &ready_file
            && let Err(e) = super::announce_listener(path, local)
        {
            ready_error = Some(e);
        }
    })
    .await
    .context("admission webhook failed")?;
    if let Some(e) = ready_error {
        return Err(e);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
