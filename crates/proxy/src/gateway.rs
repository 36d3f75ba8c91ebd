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

use crate::EXTERNAL;
use crate::forward::{Body, Proxy, error};

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

/// The gateway listener and its routing table.
pub struct Gateway {
    addr: SocketAddr,
    routes: RwLock<Vec<Owned>>,
    task: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(t) = self.task.lock().ok().and_then(|mut t| t.take()) {
            t.abort();
        }
    }
}

impl Gateway {
    /// Binds the gateway port and starts serving.
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Arc<Gateway>> {
        let listener = TcpListener::bind(addr).await?;
        let gateway = Arc::new(Gateway {
            addr: listener.local_addr()?,
            routes: RwLock::new(Vec::new()),
            task: std::sync::Mutex::new(None),
        });
        let weak = Arc::downgrade(&gateway);
        let task = tokio::spawn(async move {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "Gateway accept failed.");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Some(gateway) = weak.upgrade() else { return };
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let gateway = gateway.clone();
                        async move { Ok::<_, Infallible>(gateway.handle(req, peer).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        if let Ok(mut t) = gateway.task.lock() {
            *t = Some(task);
        }
        Ok(gateway)
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

    async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let host = req
            .headers()
            .get(hyper::header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| req.uri().host())
            .map(|h| h.rsplit_once(':').map(|(name, _)| name).unwrap_or(h).to_string());
        match self.route(host.as_deref(), req.uri().path()) {
            Some(target) => target.0.handle(req, peer, EXTERNAL).await,
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
