//! `picket ca`: create, run and inspect the embedded certificate authority.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use picket_ca::authority::{Authority, CaError, InitOptions};
use picket_ca::rotation::{self, GivenRoot};
use picket_ca::server::ServeOptions;
use picket_ca::tokenreview::{TokenReviewConfig, TokenReviewer};
use picket_ca::{ServerNames, TrustDomain, WorkloadName};
use picket_common::text::hex;
use tokio_util::sync::CancellationToken;

/// `picket ca` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum CaCommand {
    /// Create a CA: a root (or an imported organisation root) and an online issuer.
    Init(InitArgs),
    /// Join tokens, the bootstrap credentials of new workloads.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Serve the CA's HTTPS API until SIGTERM or SIGINT.
    Serve(ServeArgs),
    /// Print the trust bundle workloads should trust (text: PEM; json and yaml: the PEM with
    /// each root's SHA-256 fingerprint).
    Bundle(BundleArgs),
    /// Rotate the intermediate or the root (see docs/rotation.md).
    #[command(subcommand)]
    Rotate(RotateCommand),
}

/// `picket ca rotate` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum RotateCommand {
    /// Sign a new intermediate under the current root; a running CA issues with it within a
    /// second.
    Intermediate(RotateIntermediateArgs),
    /// One stage of a root rotation: add (new root into the bundle), switch (issue under the
    /// new root), remove (old root out of the bundle).
    Root(RotateRootArgs),
}

/// Arguments of `picket ca rotate intermediate`.
#[derive(Debug, clap::Args)]
pub struct RotateIntermediateArgs {
    /// The CA's state directory.
    #[arg(long)]
    state_dir: PathBuf,
    #[command(flatten)]
    root: OrgRoot,
}

/// An organisation root that signs the CA's issuer (`ca init`, `ca rotate intermediate`).
#[derive(Debug, clap::Args)]
pub struct OrgRoot {
    /// For a CA under an organisation root: that root's certificate (PEM).
    #[arg(long = "root-cert-file", value_name = "PEM", requires = "root_key")]
    root_cert: Option<PathBuf>,
    /// For a CA under an organisation root: that root's private key (PEM); used to sign the
    /// issuer, never copied into the state directory.
    #[arg(long = "root-key-file", value_name = "PEM", requires = "root_cert")]
    root_key: Option<PathBuf>,
}

/// Arguments of `picket ca rotate root`.
#[derive(Debug, clap::Args)]
pub struct RotateRootArgs {
    /// The CA's state directory.
    #[arg(long)]
    state_dir: PathBuf,
    /// For a CA whose root was imported: the new organisation root's certificate (PEM), at
    /// --stage add and --stage switch.
    #[arg(long = "root-cert-file", value_name = "PEM")]
    root_cert: Option<PathBuf>,
    /// For a CA whose root was imported: the new organisation root's key (PEM), at --stage
    /// switch only; used once, not copied.
    #[arg(long = "root-key-file", value_name = "PEM", requires = "root_cert")]
    root_key: Option<PathBuf>,
    /// add, switch or remove, in that order.
    #[arg(long)]
    stage: rotation::RootStage,
    /// With --stage remove: go ahead even though certificates of the old root are still
    /// valid (they stop verifying at once).
    #[arg(long)]
    force: bool,
}

/// `picket ca token` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Create a join token and print it on stdout (text: only the token; json and yaml: the
    /// token with the identity, uses and lifetime it grants).
    Create(TokenCreateArgs),
}

/// Arguments of `picket ca init`.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Trust domain of every identity the CA issues, e.g. cluster.local.
    #[arg(long)]
    trust_domain: TrustDomain,
    /// Directory for the CA's state (created with mode 0700; must not hold a CA already).
    #[arg(long)]
    state_dir: PathBuf,
    /// Without these, a new root is made.
    #[command(flatten)]
    root: OrgRoot,
    /// Lifetime of issued certificates [default: 24h].
    #[arg(long, value_parser = picket_common::duration::parse)]
    leaf_ttl: Option<Duration>,
    /// Longest lifetime the CA may be configured to issue [default: 168h].
    #[arg(long, value_parser = picket_common::duration::parse)]
    max_leaf_ttl: Option<Duration>,
    /// If the state directory already holds a CA of the same trust domain, keep it and succeed
    /// (for an init step that runs at every start); the root options are then not needed.
    #[arg(long)]
    keep_existing: bool,
    /// Make a CA replica that signs with the shared material in this directory (issuer.pem,
    /// issuer.key, bundle.pem: another CA's, e.g. a Kubernetes Secret volume), read again
    /// whenever it changes. No root or intermediate is made; the replica redeems no join
    /// tokens (the CA the material comes from does).
    #[arg(long, conflicts_with_all = ["root_cert", "root_key"])]
    signer_dir: Option<PathBuf>,
}

/// Arguments of `picket ca token create`.
#[derive(Debug, clap::Args)]
pub struct TokenCreateArgs {
    /// The CA's state directory.
    #[arg(long)]
    state_dir: PathBuf,
    /// The identity the token grants, as ns/<namespace>/sa/<service-account>.
    #[arg(long)]
    identity: WorkloadName,
    /// How long the token can be used.
    #[arg(long, default_value = "1h", value_parser = picket_common::duration::parse)]
    ttl: Duration,
    /// How many certificates the token can obtain.
    #[arg(long, default_value_t = 1)]
    uses: u32,
    #[command(flatten)]
    output: super::OutputArgs,
}

/// Arguments of `picket ca serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The CA's state directory.
    #[arg(long)]
    state_dir: PathBuf,
    /// Address to listen on, e.g. 127.0.0.1:7443 (port 0 picks a free port).
    #[arg(long)]
    listen: SocketAddr,
    /// Extra DNS name or IP address for the server certificate (repeatable); localhost,
    /// 127.0.0.1, ::1 and the listen address are always included.
    #[arg(long = "san")]
    sans: Vec<String>,
    /// Once listening, write {"listen":"IP:PORT"} here (for supervisors and tests).
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Accept Kubernetes service-account tokens, checked with the TokenReview API of this API
    /// server (`https://host[:port]`; in a pod, https://kubernetes.default.svc).
    #[arg(long, value_name = "URL")]
    kube_api: Option<String>,
    /// PEM roots for the API server's certificate.
    #[arg(
        long,
        requires = "kube_api",
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
    )]
    kube_ca_file: PathBuf,
    /// The CA's own service-account token, sent with every review (re-read each time).
    #[arg(
        long,
        requires = "kube_api",
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    )]
    kube_token_file: PathBuf,
    /// The audience workload tokens must carry.
    #[arg(long, requires = "kube_api", default_value = picket_ca::tokenreview::DEFAULT_AUDIENCE)]
    token_audience: String,
    /// Allow an identity TLS server certificates for DNS names, as
    /// ns/<namespace>/sa/<service-account>=<name>[,<name>] (repeatable); used by the admission
    /// webhook, which the API server reaches by its Service's DNS name.
    #[arg(long = "server-name", value_name = "IDENTITY=NAMES")]
    server_names: Vec<ServerNames>,
}

/// Arguments of `picket ca bundle`.
#[derive(Debug, clap::Args)]
pub struct BundleArgs {
    /// The CA's state directory.
    #[arg(long)]
    state_dir: PathBuf,
    #[command(flatten)]
    output: super::OutputArgs,
}

/// Runs one `picket ca` subcommand.
pub async fn run(cmd: CaCommand) -> anyhow::Result<()> {
    match cmd {
        CaCommand::Init(args) => init(args),
        CaCommand::Token(TokenCommand::Create(args)) => create_token(args),
        CaCommand::Serve(args) => serve(args).await,
        CaCommand::Bundle(args) => bundle(args),
        CaCommand::Rotate(RotateCommand::Intermediate(args)) => {
            let given = GivenRoot {
                cert: args.root.root_cert,
                key: args.root.root_key,
            };
            rotated(rotation::rotate_intermediate(&args.state_dir, &given))
        }
        CaCommand::Rotate(RotateCommand::Root(args)) => {
            let given = GivenRoot {
                cert: args.root_cert,
                key: args.root_key,
            };
            rotated(rotation::rotate_root(
                &args.state_dir,
                args.stage,
                &given,
                args.force,
            ))
        }
    }
}

fn rotated(result: Result<rotation::Rotated, CaError>) -> anyhow::Result<()> {
    let done = result.context("cannot rotate")?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", done.summary)?;
    stdout.flush()?;
    Ok(())
}

fn init(args: InitArgs) -> anyhow::Result<()> {
    let trust_domain = args.trust_domain.clone();
    let mut options = InitOptions::new(args.state_dir, args.trust_domain);
    options.root = args.root.root_cert.zip(args.root.root_key);
    options.signer_dir = args.signer_dir;
    if let Some(ttl) = args.leaf_ttl {
        options.leaf_ttl = ttl;
    }
    if let Some(ttl) = args.max_leaf_ttl {
        options.max_leaf_ttl = ttl;
    }
    match Authority::init(options) {
        Ok(_) => Ok(()),
        Err(CaError::AlreadyInitialised(dir)) if args.keep_existing => {
            let existing = open(&dir)?;
            anyhow::ensure!(
                existing.trust_domain() == &trust_domain,
                "{} holds a CA of trust domain {}, not {trust_domain}",
                dir.display(),
                existing.trust_domain(),
            );
            tracing::info!(state_dir = %dir.display(), "keeping the existing CA");
            Ok(())
        }
        Err(e) => Err(e).context("cannot initialise the CA"),
    }
}

/// A join token as `ca token create -o json|yaml` prints it.
#[derive(serde::Serialize)]
struct CreatedToken<'a> {
    token: &'a str,
    identity: String,
    uses: u32,
    ttl_seconds: u64,
}

fn create_token(args: TokenCreateArgs) -> anyhow::Result<()> {
    let authority = open(&args.state_dir)?;
    let token = authority
        .create_token(&args.identity, args.ttl, args.uses)
        .context("cannot create a join token")?;
    let created = CreatedToken {
        token: &token,
        identity: picket_ca::SpiffeId::new(authority.trust_domain().clone(), args.identity)
            .to_string(),
        uses: args.uses,
        ttl_seconds: args.ttl.as_secs(),
    };
    args.output.output.print(&created, || format!("{token}\n"))
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let authority = Arc::new(open(&args.state_dir)?);
    let token_review = match &args.kube_api {
        None => None,
        Some(api_url) => Some(
            TokenReviewer::new(&TokenReviewConfig {
                api_url: api_url.clone(),
                api_ca_file: args.kube_ca_file.clone(),
                token_file: args.kube_token_file.clone(),
                audience: args.token_audience.clone(),
            })
            .context("cannot set up Kubernetes token review")?,
        ),
    };
    let mut server_names = ServerNames::default();
    for allowed in args.server_names {
        server_names.merge(allowed);
    }
    let options = ServeOptions {
        extra_names: args.sans,
        token_review,
        server_names,
        reload_interval: picket_ca::server::DEFAULT_RELOAD_INTERVAL,
    };
    // Signals are hooked before the ready file appears, so none sent after it is missed.
    let shutdown = CancellationToken::new();
    super::cancel_on_signal(shutdown.clone())?;
    let (listener, local) = super::bind(args.listen).await?;
    if let Some(path) = &args.ready_file {
        super::announce_listener(path, local)?;
    }
    picket_ca::server::serve_with(authority, listener, options, async move {
        shutdown.cancelled().await
    })
    .await
    .context("CA server failed")
}

/// The trust bundle as `ca bundle -o json|yaml` prints it.
#[derive(serde::Serialize)]
struct Bundle {
    trust_domain: String,
    /// Each root's SHA-256 fingerprint (of its DER), lowercase hex, in bundle order.
    root_sha256: Vec<String>,
    bundle_pem: String,
}

fn bundle(args: BundleArgs) -> anyhow::Result<()> {
    let authority = open(&args.state_dir)?;
    let bundle = Bundle {
        trust_domain: authority.trust_domain().to_string(),
        root_sha256: authority
            .trust_anchors()
            .iter()
            .map(|der| hex(&picket_common::crypto::sha256(der)))
            .collect(),
        bundle_pem: authority.trust_bundle_pem(),
    };
    args.output
        .output
        .print(&bundle, || bundle.bundle_pem.clone())
}

fn open(state_dir: &std::path::Path) -> anyhow::Result<Authority> {
    Authority::open(state_dir)
        .with_context(|| format!("cannot open the CA state in {}", state_dir.display()))
}
