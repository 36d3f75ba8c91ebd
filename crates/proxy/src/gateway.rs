//! The north–south gateway: one port for traffic from outside the app, routed by host and path
//! prefix into the components' service proxies, so the same policies, balancing and metrics
//! apply as for calls between components.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::forward::{Body, Downstream, Proxy, error};
use crate::{EXTERNAL, accept};

/// A component's service proxy, to route requests into.
#[derive(Clone)]
pub struct ServiceHandle(pub(crate) Arc<Proxy>);

impl PartialEq for ServiceHandle {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// One gateway route.
#[derive(Clone, PartialEq)]
pub struct GatewayRoute {
    /// Host the request must name; `None` matches any host.
    pub host: Option<String>,
    /// Path prefix.
    pub prefix: String,
    /// Where matching requests go.
    pub target: ServiceHandle,
}

struct Owned {
    app: String,
    component: String,
    route: GatewayRoute,
}

/// The gateway listeners (plain HTTP, and HTTPS when configured) and the routing table.
pub struct Gateway {
    addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    routes: RwLock<Vec<Owned>>,
    certs: Arc<Certificates>,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.drain(..).for_each(|t| t.abort());
        }
    }
}

/// Certificates by domain, chosen by the TLS client's server name (SNI).
#[derive(Debug, Default)]
struct Certificates(RwLock<std::collections::HashMap<String, Arc<rustls::sign::CertifiedKey>>>);

impl rustls::server::ResolvesServerCert for Certificates {
    fn resolve(&self, hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let name = hello.server_name()?.to_ascii_lowercase();
        self.0.read().ok()?.get(&name).cloned()
    }
}

/// Reads a PEM certificate chain and private key into a signing key.
fn load_certified_key(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<rustls::sign::CertifiedKey, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("cannot read certificate {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("invalid certificate {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("no certificate in {}", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read private key {}: {e}", key.display()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("unsupported private key: {e}"))?;
    let certified = rustls::sign::CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| format!("certificate and key do not match: {e}"))?;
    Ok(certified)
}

impl Gateway {
    /// Binds the gateway's HTTP port (and HTTPS port, when given) and starts serving.
    pub async fn bind(addr: SocketAddr, tls_addr: Option<SocketAddr>) -> std::io::Result<Arc<Gateway>> {
        let listener = TcpListener::bind(addr).await?;
        let tls_listener = match tls_addr {
            Some(a) => Some(TcpListener::bind(a).await?),
            None => None,
        };
        let gateway = Arc::new(Gateway {
            addr: listener.local_addr()?,
            tls_addr: tls_listener.as_ref().map(|l| l.local_addr()).transpose()?,
            routes: RwLock::new(Vec::new()),
            certs: Arc::new(Certificates::default()),
            tasks: std::sync::Mutex::new(Vec::new()),
        });
        let mut tasks = vec![tokio::spawn(serve_plain(listener, Arc::downgrade(&gateway)))];
        if let Some(l) = tls_listener {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut config = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(std::io::Error::other)?
                .with_no_client_auth()
                .with_cert_resolver(gateway.certs.clone());
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
            tasks.push(tokio::spawn(serve_tls(l, acceptor, Arc::downgrade(&gateway))));
        }
        if let Ok(mut t) = gateway.tasks.lock() {
            *t = tasks;
        }
        Ok(gateway)
    }

    /// The HTTPS address, when one listens.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// Serves `domain` over HTTPS with the certificate and key in these PEM files.
    pub fn set_certificate(
        &self,
        domain: &str,
        cert: &std::path::Path,
        key: &std::path::Path,
    ) -> Result<(), String> {
        if self.tls_addr.is_none() {
            return Err("the daemon runs no HTTPS gateway (yun server --gateway-tls)".into());
        }
        let certified = load_certified_key(cert, key)?;
        if let Ok(mut m) = self.certs.0.write() {
            m.insert(domain.to_ascii_lowercase(), Arc::new(certified));
        }
        Ok(())
    }

    /// Stops serving `domain` over HTTPS.
    pub fn remove_certificate(&self, domain: &str) {
        if let Ok(mut m) = self.certs.0.write() {
            m.remove(&domain.to_ascii_lowercase());
        }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the routes of one component (an empty list removes them).
    pub fn set_routes(&self, app: &str, component: &str, routes: Vec<GatewayRoute>) {
        let same = self.routes.read().is_ok_and(|all| {
            let mine: Vec<&GatewayRoute> =
                all.iter().filter(|o| o.app == app && o.component == component).map(|o| &o.route).collect();
            mine.len() == routes.len() && mine.iter().zip(&routes).all(|(a, b)| *a == b)
        });
        if same {
            return;
        }
        if let Ok(mut all) = self.routes.write() {
            all.retain(|o| !(o.app == app && o.component == component));
            all.extend(routes.into_iter().map(|route| Owned {
                app: app.into(),
                component: component.into(),
                route,
            }));
        }
    }

    /// The proxy for a request: routes naming its host first, then host-less ones; the longest
    /// matching prefix wins.
    fn route(&self, host: Option<&str>, path: &str) -> Option<ServiceHandle> {
        let all = self.routes.read().ok()?;
        let best = |named: bool| {
            all.iter()
                .filter(|o| match (&o.route.host, host) {
                    (Some(h), Some(req)) => named && h.eq_ignore_ascii_case(req),
                    (None, _) => !named,
                    (Some(_), None) => false,
                })
                .filter(|o| path.starts_with(&o.route.prefix))
                .max_by_key(|o| o.route.prefix.len())
                .map(|o| o.route.target.clone())
        };
        best(true).or_else(|| best(false))
    }

    pub(crate) async fn handle(&self, req: Request<Incoming>, client: &Downstream) -> Response<Body> {
        let host = req
            .headers()
            .get(hyper::header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| req.uri().host())
            .map(|h| h.rsplit_once(':').map(|(name, _)| name).unwrap_or(h).to_string());
        match self.route(host.as_deref(), req.uri().path()) {
            Some(target) => target.0.handle(crate::forward::from_hyper(req), client).await,
            None => error(
                StatusCode::NOT_FOUND,
                &format!(
                    "no gateway route for host {} and path {}",
                    host.as_deref().unwrap_or("-"),
                    req.uri().path()
                ),
            ),
        }
    }
}

fn serve_connection<I>(io: I, peer: SocketAddr, gateway: Arc<Gateway>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let client = Arc::new(Downstream::new(peer, EXTERNAL.into(), "".into()));
        let svc = hyper::service::service_fn(move |req| {
            let gateway = gateway.clone();
            let client = client.clone();
            async move { Ok::<_, Infallible>(gateway.handle(req, &client).await) }
        });
        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
            .serve_connection_with_upgrades(TokioIo::new(io), svc)
            .await;
    });
}

async fn serve_plain(listener: TcpListener, gateway: std::sync::Weak<Gateway>) {
    loop {
        let (stream, peer) = accept(&listener).await;
        let Some(gateway) = gateway.upgrade() else { return };
        serve_connection(stream, peer, gateway);
    }
}

async fn serve_tls(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    gateway: std::sync::Weak<Gateway>,
) {
    loop {
        let (stream, peer) = accept(&listener).await;
        let Some(gateway) = gateway.upgrade() else { return };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            // A handshake that stalls must not hold the connection forever.
            match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                Ok(Ok(tls)) => serve_connection(tls, peer, gateway),
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed."),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out."),
            }
        });
    }
}
