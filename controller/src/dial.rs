//! Dialling agents over mTLS, and telling apart the ways it fails.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use ferry_proto::v1::agent_client::AgentClient;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

use crate::inventory::Target;

/// Why an agent could not be talked to. Each variant is a distinct outcome for an operator.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DialError {
    /// Nothing answered: agent stopped, host down, wrong address or port, firewall.
    #[error("agent at {addr} is not answering: {cause}")]
    Unreachable { addr: String, cause: String },
    /// The agent rejected our client certificate.
    #[error(
        "agent at {addr} refused our certificate: {cause}; check the tls: cert/key in the ferry config (`ferry certs show FILE`)"
    )]
    RefusedByAgent { addr: String, cause: String },
    /// The agent's certificate does not prove it is the host we dialled.
    #[error("agent at {addr} presented a certificate we do not accept: {cause}")]
    AgentCertificate { addr: String, cause: String },
    /// A valid fleet agent answered, but it is another host than the inventory entry names.
    #[error(
        "the agent at {addr} is {presented:?}, not {expected:?}: the inventory's address for {expected:?} reaches another host; nothing was sent to it. Fix ansible_host/ferry_host for {expected:?} (or set ferry_agent_name if the host is enrolled under another name)"
    )]
    WrongHost {
        addr: String,
        expected: String,
        presented: String,
    },
}

impl DialError {
    /// A short machine-readable name for JSON output.
    pub fn kind(&self) -> &'static str {
        match self {
            DialError::Unreachable { .. } => "unreachable",
            DialError::RefusedByAgent { .. } => "certificate_refused_by_agent",
            DialError::AgentCertificate { .. } => "agent_certificate_rejected",
            DialError::WrongHost { .. } => "wrong_host",
        }
    }
}

/// Opens gRPC channels to agents with the controller's TLS identity.
#[derive(Clone)]
pub struct Dialer {
    tls: Arc<rustls::ClientConfig>,
    connect_timeout: Duration,
}

impl Dialer {
    pub fn new(tls: Arc<rustls::ClientConfig>, connect_timeout: Duration) -> Self {
        Dialer {
            tls,
            connect_timeout,
        }
    }

    /// Connects to `target` and completes the TLS handshake; the agent's certificate must chain to the
    /// fleet CA, name `target.address` in its SANs and `target.agent_name` as its CN.
    pub async fn connect(&self, target: &Target) -> Result<AgentConn, DialError> {
        let addr = format!("{}:{}", target.address, target.port);
        let server_name =
            ServerName::try_from(target.address.clone()).map_err(|_| DialError::Unreachable {
                addr: addr.clone(),
                cause: format!("{:?} is not a valid host name or address", target.address),
            })?;
        let connector = TlsConnector::from(Arc::clone(&self.tls));
        let timeout = self.connect_timeout;
        let dial_addr = addr.clone();
        let tls_error: TlsErrorSlot = Arc::default();
        let slot = Arc::clone(&tls_error);
        let expected = target.agent_name.clone();
        // The URI is only a label: the connector below decides where and how to connect.
        // HTTP/2 keepalive: an agent that dies behind a proxy or a NAT is noticed, not waited on.
        let endpoint = Endpoint::from_static("http://agent")
            .connect_timeout(timeout)
            .http2_keep_alive_interval(std::time::Duration::from_secs(5))
            .keep_alive_timeout(std::time::Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .initial_stream_window_size(Some(8 << 20))
            .initial_connection_window_size(Some(8 << 20));
        let channel = endpoint
            .connect_with_connector(tower::service_fn(move |_uri| {
                let connector = connector.clone();
                let server_name = server_name.clone();
                let dial_addr = dial_addr.clone();
                let slot = Arc::clone(&slot);
                let expected = expected.clone();
                async move {
                    let tcp =
                        tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&dial_addr))
                            .await
                            .map_err(|_| {
                                ConnectFailure::Tcp(format!(
                                    "no answer within {}s",
                                    timeout.as_secs()
                                ))
                            })?
                            .map_err(|e| ConnectFailure::Tcp(e.to_string()))?;
                    let _ = tcp.set_nodelay(true);
                    let tls = connector
                        .connect(server_name, tcp)
                        .await
                        .map_err(ConnectFailure::Tls)?;
                    let presented = agent_name(tls.get_ref().1);
                    if presented != expected {
                        return Err(ConnectFailure::WrongHost {
                            expected,
                            presented,
                        });
                    }
                    Ok::<_, ConnectFailure>(TokioIo::new(Recorded { inner: tls, slot }))
                }
            }))
            .await
            .map_err(|e| classify(&addr, &e))?;
        let client = AgentClient::new(channel)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        Ok(AgentConn {
            client,
            addr,
            tls_error,
        })
    }
}

type TlsErrorSlot = Arc<Mutex<Option<rustls::Error>>>;

/// A connected agent, and what its TLS layer last reported.
pub struct AgentConn {
    pub client: AgentClient<Channel>,
    addr: String,
    tls_error: TlsErrorSlot,
}

impl AgentConn {
    /// The agent's refusal of our certificate, if the TLS layer recorded one.
    pub fn refused(&self) -> Option<DialError> {
        let recorded = self
            .tls_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        recorded.map(|tls| from_rustls(&self.addr, &tls))
    }

    /// Why an RPC failed, if the transport is to blame. With TLS 1.3 an agent's refusal of our
    /// certificate arrives as an alert on the first read, which hyper reports only as "connection
    /// closed"; the recorded TLS error tells the real story.
    pub fn transport_error(&self, status: &tonic::Status) -> Option<DialError> {
        self.refused().or_else(|| rpc_error(&self.addr, status))
    }

    /// A failed RPC in words: the transport's story when it is to blame, else the agent's message.
    pub fn failure_text(&self, status: &tonic::Status) -> String {
        self.transport_error(status)
            .map(|e| e.to_string())
            .unwrap_or_else(|| status.message().to_string())
    }
}

/// Passes I/O through and keeps the TLS error a read or write failed with.
struct Recorded<T> {
    inner: T,
    slot: TlsErrorSlot,
}

impl<T> Recorded<T> {
    fn record<R>(&self, result: Poll<std::io::Result<R>>) -> Poll<std::io::Result<R>> {
        if let Poll::Ready(Err(e)) = &result
            && let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>())
        {
            *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(tls.clone());
        }
        result
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Recorded<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.record(result)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Recorded<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.record(result)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        self.record(result)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[derive(Debug, thiserror::Error)]
enum ConnectFailure {
    #[error("{0}")]
    Tcp(String),
    #[error("{0}")]
    Tls(std::io::Error),
    #[error("the agent is {presented:?}, not {expected:?}")]
    WrongHost { expected: String, presented: String },
}

/// The CN of the agent's certificate (empty if it cannot be read).
fn agent_name(conn: &rustls::ClientConnection) -> String {
    conn.peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(|der| ferry_certs::CertInfo::from_der(der).ok())
        .map(|info| info.common_name)
        .unwrap_or_default()
}

/// Turns a transport failure (from connecting, or from the first RPC, where a TLS 1.3 server's refusal
/// of our certificate shows up) into a [`DialError`].
pub fn classify(addr: &str, error: &(dyn std::error::Error + 'static)) -> DialError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    let mut last = error.to_string();
    while let Some(err) = source {
        if let Some(failure) = err.downcast_ref::<ConnectFailure>() {
            match failure {
                ConnectFailure::WrongHost {
                    expected,
                    presented,
                } => {
                    return DialError::WrongHost {
                        addr: addr.into(),
                        expected: expected.clone(),
                        presented: presented.clone(),
                    };
                }
                ConnectFailure::Tcp(cause) => {
                    return DialError::Unreachable {
                        addr: addr.into(),
                        cause: cause.clone(),
                    };
                }
                ConnectFailure::Tls(io) => {
                    if let Some(tls) = io.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>())
                    {
                        return from_rustls(addr, tls);
                    }
                    return DialError::Unreachable {
                        addr: addr.into(),
                        cause: format!("TLS handshake: {io}"),
                    };
                }
            }
        }
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return from_rustls(addr, tls);
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(tls) = io.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
                return from_rustls(addr, tls);
            }
            if io.kind() == std::io::ErrorKind::UnexpectedEof {
                // rustls' "peer closed connection without sending TLS close_notify".
                return DialError::Unreachable {
                    addr: addr.into(),
                    cause: "the agent closed the connection mid-call (it stopped or restarted, or the link broke)".into(),
                };
            }
        }
        last = err.to_string();
        source = err.source();
    }
    DialError::Unreachable {
        addr: addr.into(),
        cause: last,
    }
}

fn from_rustls(addr: &str, error: &rustls::Error) -> DialError {
    use rustls::CertificateError as C;
    match error {
        rustls::Error::AlertReceived(alert) => {
            use rustls::AlertDescription as A;
            let why = match alert {
                A::CertificateRequired => "we presented no client certificate",
                A::UnknownCA | A::BadCertificate => {
                    "our certificate is not from the agent's fleet CA"
                }
                A::CertificateExpired => "our certificate has expired or is not yet valid",
                A::UnsupportedCertificate | A::AccessDenied => {
                    "our certificate does not carry the controller role"
                }
                _ => "the TLS handshake was rejected",
            };
            DialError::RefusedByAgent {
                addr: addr.into(),
                cause: format!("{why}; TLS alert {alert:?}"),
            }
        }
        rustls::Error::InvalidCertificate(cert) => {
            let cause = match cert {
                C::NotValidForName => format!("it is not valid for the dialled name {addr}"),
                C::NotValidForNameContext {
                    expected,
                    presented,
                } => format!(
                    "it is not valid for the dialled name \"{}\": it names {}",
                    expected.to_str(),
                    presented
                        .iter()
                        .map(|p| san_text(p))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                C::UnknownIssuer | C::BadSignature => {
                    "it is not issued by this fleet's CA".to_string()
                }
                C::Expired | C::ExpiredContext { .. } => "it has expired".to_string(),
                other => format!("{other:?}"),
            };
            DialError::AgentCertificate {
                addr: addr.into(),
                cause: format!(
                    "{cause}; if the address is right, reissue the agent's certificate with `ferry certs issue-agent NAME --san ADDRESS` and install it on the host"
                ),
            }
        }
        other => DialError::Unreachable {
            addr: addr.into(),
            cause: format!("TLS: {other}"),
        },
    }
}

/// `DnsName("a.example")` (rustls' rendering of a SAN) to `a.example`.
fn san_text(presented: &str) -> &str {
    presented
        .split_once('"')
        .and_then(|(_, rest)| rest.rsplit_once('"'))
        .map(|(inner, _)| inner)
        .unwrap_or(presented)
}

/// Classifies a failed RPC: transport failures become [`DialError`]s, anything else stays a status.
fn rpc_error(addr: &str, status: &tonic::Status) -> Option<DialError> {
    use std::error::Error;
    let source = status.source()?;
    match classify(addr, source) {
        DialError::Unreachable { .. }
            if status.code() != tonic::Code::Unavailable
                && status.code() != tonic::Code::Unknown =>
        {
            None
        }
        other => Some(other),
    }
}
