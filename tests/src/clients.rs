//! Clients in front of the mesh: `curl` and `openssl s_client` as real outside programs, and
//! hyper and rustls in-process where a test needs control over bytes, streams or trailers.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::{Output, Stdio};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http::{Method, Request, Response, Version, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use picket_proxy::echo::{BodyDigest, Description};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::process::output;

/// Request and response body of the in-process clients.
pub type Body = BoxBody<Bytes, Infallible>;

/// An empty body.
pub fn empty() -> Body {
    Empty::new().boxed()
}

/// A body of `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

/// A request for `path` on `host`, in the form each version expects: HTTP/1.1 carries the host
/// in a `Host` header, HTTP/2 in the `:authority` of an absolute URI.
pub fn request(
    method: Method,
    version: Version,
    host: &str,
    path: &str,
    body: Body,
) -> Result<Request<Body>> {
    let builder = Request::builder().method(method).version(version);
    let builder = if version == Version::HTTP_2 {
        builder.uri(format!("http://{host}{path}"))
    } else {
        builder.uri(path).header(header::HOST, host)
    };
    Ok(builder.body(body)?)
}

/// One HTTP/1.1 or HTTP/2 client connection.
#[derive(Debug)]
pub enum HttpClient {
    /// HTTP/1.1.
    Http1(http1::SendRequest<Body>),
    /// HTTP/2 (h2c when plaintext).
    Http2(http2::SendRequest<Body>),
}

impl HttpClient {
    /// Opens a plaintext connection to `addr` speaking `version` (HTTP/2 with prior knowledge).
    pub async fn connect(addr: SocketAddr, version: Version) -> Result<Self> {
        let tcp = TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to {addr}"))?;
        Self::handshake(tcp, version).await
    }

    /// Speaks `version` over an established stream, such as a TLS connection.
    pub async fn handshake<I>(io: I, version: Version) -> Result<Self>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let io = TokioIo::new(io);
        // The connection tasks end when the peer closes or the client is dropped.
        if version == Version::HTTP_2 {
            let (send, conn) = http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(conn);
            Ok(Self::Http2(send))
        } else {
            let (send, conn) = http1::handshake(io).await?;
            tokio::spawn(conn);
            Ok(Self::Http1(send))
        }
    }

    /// Sends one request and returns the response head; the body streams as it is read.
    pub async fn send(&mut self, req: Request<Body>) -> Result<Response<Incoming>> {
        Ok(match self {
            Self::Http1(send) => {
                send.ready().await?;
                send.send_request(req).await?
            }
            Self::Http2(send) => {
                send.ready().await?;
                send.send_request(req).await?
            }
        })
    }
}

/// Sends `req` on a new plaintext connection to `addr`, in the request's HTTP version.
pub async fn send(addr: SocketAddr, req: Request<Body>) -> Result<Response<Incoming>> {
    HttpClient::connect(addr, req.version())
        .await?
        .send(req)
        .await
}

/// `GET host/path` on a new plaintext connection to `addr`.
pub async fn get(
    addr: SocketAddr,
    version: Version,
    host: &str,
    path: &str,
) -> Result<Response<Incoming>> {
    send(addr, request(Method::GET, version, host, path, empty())?).await
}

/// The whole response body as text.
pub async fn body_text(resp: Response<Incoming>) -> Result<String> {
    let bytes = resp.into_body().collect().await?.to_bytes();
    Ok(String::from_utf8(bytes.to_vec())?)
}

/// The echo app's description of the request, from a `200` response.
pub async fn described(resp: Response<Incoming>) -> Result<Description> {
    let status = resp.status();
    let text = body_text(resp).await?;
    if status != http::StatusCode::OK {
        bail!("expected 200 from the echo app, got {status}: {text}");
    }
    serde_json::from_str(&text).with_context(|| format!("not an echo description: {text}"))
}

/// Byte count and SHA-256 of a response body, read as a stream.
pub async fn body_digest(resp: Response<Incoming>) -> Result<(u64, String)> {
    let mut body = resp.into_body();
    let mut digest = BodyDigest::default();
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref() {
            digest.update(data);
        }
    }
    Ok(digest.finish())
}

/// What `curl` did.
#[derive(Debug)]
pub struct Curl {
    /// Exit code; 0 when a response arrived.
    pub exit_code: Option<i32>,
    /// HTTP status, 0 when none arrived.
    pub status: u16,
    /// HTTP version of the response as curl names it (`1.1`, `2`), `0` when none arrived.
    pub http_version: String,
    /// Response body.
    pub body: String,
    /// curl's error messages.
    pub stderr: String,
}

impl Curl {
    /// The echo app's description of the request; fails unless curl got a `200`.
    pub fn described(&self) -> Result<Description> {
        if self.status != 200 {
            bail!("expected 200 from the echo app, got {self:?}");
        }
        serde_json::from_str(&self.body)
            .with_context(|| format!("not an echo description: {self:?}"))
    }
}

/// A `curl` command with the options every test call shares: errors shown but no progress,
/// any proxy settings of the machine ignored, 30 s at most.
pub fn curl_command() -> Command {
    let mut cmd = Command::new("curl");
    cmd.args([
        "--silent",
        "--show-error",
        "--noproxy",
        "*",
        "--max-time",
        "30",
    ]);
    cmd
}

/// Runs `curl` with `args` (the URL among them), ignoring any proxy settings of the machine.
pub async fn curl(args: &[&str]) -> Result<Curl> {
    let out = output(
        curl_command()
            .args(["--write-out", "\n%{http_version} %{http_code}"])
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true),
    )
    .await
    .context("is curl installed? scripts/install-test-deps installs it")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (body, last_line) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    let (http_version, status) = last_line.split_once(' ').unwrap_or(("0", "0"));
    Ok(Curl {
        exit_code: out.status.code(),
        status: status.trim().parse().unwrap_or(0),
        http_version: http_version.to_owned(),
        body: body.to_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Runs `openssl s_client` against `addr` with `extra` arguments, writes `input` once the
/// connection is up, and waits for the server to close (`-ign_eof`).
pub async fn openssl_s_client(addr: SocketAddr, extra: &[&str], input: &[u8]) -> Result<Output> {
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string(), "-ign_eof"])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("cannot run openssl: scripts/install-test-deps installs it")?;
    let mut stdin = child.stdin.take().context("openssl has no stdin")?;
    // The server may close before reading: a failed write is part of what is tested.
    let _ = stdin.write_all(input).await;
    drop(stdin);
    let wait = child.wait_with_output();
    tokio::time::timeout(crate::wait::COMMAND_TIMEOUT, wait)
        .await
        .context("openssl s_client did not finish")?
        .context("openssl s_client failed to run")
}

/// A TLS 1.3 client configuration offering `alpn`, presenting `identity` (chain, key) if
/// given, and accepting any server certificate: tests aim at the server's checks of the
/// client, not the other way round.
pub fn tls_client_config(
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>> {
    let provider = picket_common::crypto::provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(picket_common::crypto::PROTOCOL_VERSIONS)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider)));
    let mut config = match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Connects to `addr` and completes a TLS handshake.
pub async fn tls_connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("picket.test")?;
    Ok(TlsConnector::from(config).connect(name, tcp).await?)
}

#[derive(Debug)]
struct AnyServerCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// One HTTP/1.x response as it came off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawResponse {
    /// Status code.
    pub status: u16,
    /// Header names (lowercased) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked when it was sent chunked.
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Writes `request` unchanged on a new TLS connection to `addr` and reads until the server
/// closes (or [`crate::wait::COMMAND_TIMEOUT`] passes), so that nothing between the test and
/// the server rewrites the bytes. The request should ask for `Connection: close`.
pub async fn raw_tls_exchange(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    request: &[u8],
) -> Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;

    let mut tls = tls_connect(addr, config).await?;
    // The server may answer and close before reading everything: a failed write is part of
    // what is tested, and the answer is still read.
    let _ = tls.write_all(request).await;
    let _ = tls.flush().await;
    let mut received = Vec::new();
    let read = async {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match tls.read(&mut buf).await {
                Ok(0) => return Ok(()),
                Ok(n) => received.extend_from_slice(&buf[..n]),
                // A close without close_notify, or a reset after the answer, ends the exchange.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
                    ) =>
                {
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
    };
    tokio::time::timeout(crate::wait::COMMAND_TIMEOUT, read)
        .await
        .context("the server neither answered nor closed the connection")??;
    Ok(received)
}

/// Splits the bytes a server sent into HTTP/1.x responses (framed by `Content-Length`,
/// chunked encoding, or the end of the connection).
pub fn parse_http1_responses(mut bytes: &[u8]) -> Result<Vec<RawResponse>> {
    let mut responses = Vec::new();
    while !bytes.is_empty() {
        let head_end = find(bytes, b"\r\n\r\n").with_context(|| {
            format!(
                "incomplete response head: {:?}",
                String::from_utf8_lossy(bytes)
            )
        })?;
        let head = std::str::from_utf8(&bytes[..head_end]).context("response head not UTF-8")?;
        bytes = &bytes[head_end + 4..];
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line {status_line:?}"))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let get = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        let body = if (100..200).contains(&status) || status == 204 || status == 304 {
            Vec::new()
        } else if get("transfer-encoding").is_some_and(|te| te.eq_ignore_ascii_case("chunked")) {
            let (body, used) = dechunk(bytes)?;
            bytes = &bytes[used..];
            body
        } else if let Some(len) = get("content-length") {
            let len: usize = len.parse().context("bad Content-Length")?;
            let body = bytes.get(..len).context("truncated body")?.to_vec();
            bytes = &bytes[len..];
            body
        } else {
            let body = bytes.to_vec();
            bytes = &[];
            body
        };
        responses.push(RawResponse {
            status,
            headers,
            body,
        });
    }
    Ok(responses)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Decodes a chunked body; returns it and the number of bytes consumed (trailers included).
fn dechunk(bytes: &[u8]) -> Result<(Vec<u8>, usize)> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let line_end = at + find(&bytes[at..], b"\r\n").context("truncated chunk size")?;
        let size_text = std::str::from_utf8(&bytes[at..line_end])?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .with_context(|| format!("bad chunk size {size_text:?}"))?;
        at = line_end + 2;
        if size == 0 {
            // Trailers, if any, up to the empty line.
            let end = at + find(&bytes[at..], b"\r\n").context("truncated trailers")?;
            let mut end = end;
            let mut line_start = at;
            while end > line_start {
                line_start = end + 2;
                end = line_start
                    + find(&bytes[line_start..], b"\r\n").context("truncated trailers")?;
            }
            return Ok((body, end + 2));
        }
        body.extend_from_slice(bytes.get(at..at + size).context("truncated chunk")?);
        at += size + 2;
    }
}
