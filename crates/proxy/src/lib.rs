//! Yun's data plane. Every webservice port gets a stable loopback address owned by the daemon
//! (a [`ServicePort`]); each request through it is balanced over ready instances
//! ([`Endpoints`]), guarded by the component's resilience policies, and measured.
//!
//! Read [`bind`] and `forward.rs` first. The proxy knows nothing of processes or the store: the
//! runtime tells it which instances are ready ([`Endpoints::set`]) and which policies apply
//! ([`ServicePort::configure`]), both changeable at any time without dropping requests.

mod caller;
mod endpoints;
mod forward;
mod gateway;
mod h1;
mod h1_server;
mod metrics;
mod policy;
mod traffic;
mod upstream;

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use caller::{Callers, EXTERNAL, HOP_HEADER};
pub use endpoints::{BASE_EJECTION, Balancer, EJECT_AFTER_FAILURES, Endpoints, Lease, MAX_EJECTION};
pub use gateway::{Gateway, GatewayRoute, ServiceHandle};
pub use metrics::Metrics;
pub use traffic::{Edge, EdgeSnapshot, LATENCY_BOUNDS, TrafficStats};

/// How long a request waits for a ready instance before it gets 503.
pub const NO_ENDPOINT_WAIT: Duration = Duration::from_secs(30);

/// What a service port does with requests; replaced atomically by [`ServicePort::configure`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PortConfig {
    /// Timeouts, retries, breaker, limits (the component's `resilience` trait).
    pub resilience: Option<yun_model::Resilience>,
    /// Balancing and fault injection (the component's `traffic` trait).
    pub traffic: Option<yun_model::Traffic>,
    /// Service address that receives mirrored copies (`traffic.mirror`).
    pub mirror_addr: Option<SocketAddr>,
    /// Service addresses of the components that `traffic.split` and `traffic.routes` name.
    pub backends: std::collections::BTreeMap<String, SocketAddr>,
}

/// A bound service port and its forwarding task; dropping it closes the port.
pub struct ServicePort {
    /// The port, on 127.0.0.1.
    pub port: u16,
    /// Ready instances behind it.
    pub endpoints: Arc<Endpoints>,
    active: Arc<RwLock<Arc<forward::Active>>>,
    proxy: Arc<forward::Proxy>,
    task: JoinHandle<()>,
}

impl ServicePort {
    /// A handle to route requests into this port's proxy (the gateway uses it).
    pub fn handle(&self) -> ServiceHandle {
        ServiceHandle(self.proxy.clone())
    }

    /// Applies new settings to requests that start from now on; requests in flight finish
    /// under the settings they started with. Unchanged settings keep their state (open
    /// breakers, rate counters).
    pub fn configure(&self, config: PortConfig) {
        if let Ok(mut a) = self.active.write()
            && a.config != config
        {
            *a = Arc::new(forward::Active::new(config));
        }
    }
}

impl Drop for ServicePort {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How a service port treats connections.
enum Mode {
    /// HTTP/1.1 and HTTP/2, request by request, with the caller resolved per connection.
    Http(Arc<Callers>),
    /// Plain TCP, passed through byte for byte.
    Tcp,
}

/// Binds `127.0.0.1:port` and starts forwarding HTTP to the endpoints of `app`'s `component`,
/// counting in `metrics`.
pub async fn bind(
    port: u16,
    app: String,
    component: String,
    config: PortConfig,
    metrics: Arc<Metrics>,
    callers: Arc<Callers>,
) -> std::io::Result<ServicePort> {
    bind_mode(port, app, component, config, metrics, Mode::Http(callers)).await
}

/// Binds `127.0.0.1:port` for plain TCP: each connection is passed through to an instance
/// chosen by the balancer, byte for byte, and counts as in flight until it closes.
pub async fn bind_tcp(
    port: u16,
    app: String,
    component: String,
    config: PortConfig,
    metrics: Arc<Metrics>,
) -> std::io::Result<ServicePort> {
    bind_mode(port, app, component, config, metrics, Mode::Tcp).await
}

async fn bind_mode(
    port: u16,
    app: String,
    component: String,
    config: PortConfig,
    metrics: Arc<Metrics>,
    mode: Mode,
) -> std::io::Result<ServicePort> {
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    let endpoints = Arc::new(Endpoints::default());
    let active = Arc::new(RwLock::new(Arc::new(forward::Active::new(config))));
    let proxy = Arc::new(forward::Proxy::new(app, component, metrics, endpoints.clone(), active.clone()));
    let accept_proxy = proxy.clone();
    let task = tokio::spawn(async move {
        loop {
            let (stream, peer) = accept(&listener).await;
            let proxy = accept_proxy.clone();
            match &mode {
                Mode::Tcp => {
                    tokio::spawn(proxy.pass_through(stream));
                }
                Mode::Http(callers) => {
                    tokio::spawn(serve_http(stream, peer, proxy, callers.clone()));
                }
            }
        }
    });
    Ok(ServicePort { port, endpoints, active, proxy, task })
}

async fn serve_http(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    proxy: Arc<forward::Proxy>,
    callers: Arc<Callers>,
) {
    let hop: Arc<str> = callers.hop_token().into();
    // Who is calling, once per connection (reads /proc, so off the workers).
    let local = stream.local_addr().unwrap_or(peer);
    let source: Arc<str> = tokio::task::spawn_blocking(move || callers.resolve(peer, local))
        .await
        .unwrap_or_else(|_| EXTERNAL.to_string())
        .into();
    let client = Arc::new(forward::Downstream::new(peer, source, hop));
    // The common case is served by the lean loop; hyper takes over a connection when it
    // meets anything else.
    let Some(rest) = h1_server::serve(stream, &proxy, &client).await else { return };
    let svc = hyper::service::service_fn(move |req| {
        let proxy = proxy.clone();
        let client = client.clone();
        async move { Ok::<_, std::convert::Infallible>(proxy.handle(forward::from_hyper(req), &client).await) }
    });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(TokioIo::new(h1_server::Prefixed::from(rest)), svc)
        .await;
}

/// The next connection, with Nagle off; failures (out of file descriptors and the like) back
/// off instead of spinning.
pub(crate) async fn accept(listener: &TcpListener) -> (tokio::net::TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                return (stream, peer);
            }
            Err(e) => {
                tracing::warn!(error = %e, "Accept failed.");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
