//! The admin listener (`--admin ADDR:PORT`): health, readiness and run-time
//! control of a running server over HTTP/1.1, on its own listener — never
//! on a package listener, so modules never see it.
//!
//! [`Admin::start`] serves a bound listener until [`Admin::shutdown`] (or
//! drop) cancels it. Every request goes through [`route`], the one `match`
//! that maps a method and path to a [`Route`]; adding a page means adding a
//! variant there and its handler in `dispatch`. The listener comes up
//! before the server scans its packages, so `/readyz` answers 503 until
//! [`Admin::set_ready`] hands it the server's [`ServerControl`].
//!
//! | route | answer |
//! |---|---|
//! | `GET /healthz` | 200 `ok` while the process runs |
//! | `GET /readyz` | 200 `{"ready":true}` once listeners are bound, the catalog scanned (an object store reached once; lost later: 200 with `"store":"…unreachable"`) and the download log writable; else 503 `{"ready":false,"not_ready":[…]}` naming the checks that failed |
//! | `GET /metrics` | Prometheus text format ([`crate::serve::metrics`]) |
//! | `GET /campaign`, `GET /campaign.json` | the live campaign page and its data ([`campaign`]) |
//! | `GET`/`PUT /faults`, `GET /downloads`, `POST /packages/rescan` | the control routes of [`control`] |
//!
//! Control routes and the campaign (it names modules: peer addresses, FTP
//! users) answer 403 to peers that are not loopback unless an
//! `--admin-allow` network holds them, and 503 before the server is ready.

pub mod campaign;
pub mod control;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use ipnet::IpNet;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::catalog::SourceHealth;
use crate::serve::ServerControl;

/// Longest time to receive a request's headers on the admin listener
/// (stops a client holding a connection open without asking anything).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long requests in flight (long-polls end at once) may finish after
/// shutdown starts.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// The body every admin response carries.
pub type AdminBody = Full<Bytes>;

/// Where the server stands, as `/readyz` reports it.
#[derive(Debug, Clone)]
enum Phase {
    /// Listeners not bound or catalog not scanned yet.
    Starting,
    /// Listeners bound, but the object store not reached yet (an empty
    /// catalog): `/readyz` says why, `/metrics` answers, the control
    /// routes and the campaign wait.
    Waiting(ServerControl),
    /// Serving; the control routes act on this server.
    Ready(ServerControl),
    /// Shutdown has begun; `/metrics` still answers from the server's
    /// control while in-flight downloads drain.
    Stopping(Option<ServerControl>),
}

/// What the request handlers share: the phase and the allowed networks.
#[derive(Debug)]
struct State {
    phase: RwLock<Phase>,
    allow: Vec<IpNet>,
    shutdown: CancellationToken,
}

impl State {
    fn phase(&self) -> Phase {
        self.phase.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_phase(&self, phase: Phase) {
        *self.phase.write().unwrap_or_else(|p| p.into_inner()) = phase;
    }
}

/// Whether `peer` may use the control routes: loopback always, any other
/// address only inside one of `allow` (`--admin-allow`). IPv4-mapped IPv6
/// peers (`::ffff:10.0.0.1`, from a listener on `[::]`) count as IPv4.
pub fn control_allowed(peer: IpAddr, allow: &[IpNet]) -> bool {
    let peer = peer.to_canonical();
    peer.is_loopback() || allow.iter().any(|net| net.contains(&peer))
}

/// A running admin listener. Dropping it stops it.
#[derive(Debug)]
pub struct Admin {
    addr: SocketAddr,
    state: Arc<State>,
    task: Option<JoinHandle<()>>,
}

impl Admin {
    /// Starts serving the admin routes on `listener` (bound by the caller,
    /// so tests can bind port 0), in the "starting" phase. `allow`: the
    /// networks besides loopback that may use the control routes.
    ///
    /// # Errors
    /// The listener's local address cannot be read.
    pub fn start(listener: TcpListener, allow: Vec<IpNet>) -> std::io::Result<Admin> {
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            phase: RwLock::new(Phase::Starting),
            allow,
            shutdown: CancellationToken::new(),
        });
        let task = tokio::spawn(run(listener, Arc::clone(&state)));
        Ok(Admin {
            addr,
            state,
            task: Some(task),
        })
    }

    /// The bound address (port 0 becomes a real port).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server is up (listeners bound, catalog scanned): `/readyz`
    /// answers 200 and the control routes act on `control`.
    pub fn set_ready(&self, control: ServerControl) {
        self.state.set_phase(Phase::Ready(control));
    }

    /// The server is up but its object store has not been reached yet:
    /// `/readyz` answers 503 naming the store, `/metrics` answers, and the
    /// control routes and the campaign answer 503 until
    /// [`Admin::set_ready`].
    pub fn set_waiting(&self, control: ServerControl) {
        self.state.set_phase(Phase::Waiting(control));
    }

    /// Shutdown has begun: `/readyz` answers 503 and the control routes
    /// are refused, while `/healthz` and `/metrics` (once the server had
    /// started) still answer until [`Admin::shutdown`].
    pub fn set_stopping(&self) {
        let control = match self.state.phase() {
            Phase::Ready(c) | Phase::Waiting(c) | Phase::Stopping(Some(c)) => Some(c),
            Phase::Starting | Phase::Stopping(None) => None,
        };
        self.state.set_phase(Phase::Stopping(control));
    }

    /// Stops accepting, ends long-polls, and waits (up to
    /// [`SHUTDOWN_GRACE`]) for requests in flight.
    pub async fn shutdown(mut self) {
        self.state.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        self.state.shutdown.cancel();
    }
}

/// Accepts connections until shutdown, then lets requests in flight
/// finish for [`SHUTDOWN_GRACE`].
async fn run(listener: TcpListener, state: Arc<State>) {
    let graceful = GracefulShutdown::new();
    let tracker = TaskTracker::new();
    let shutdown = state.shutdown.clone();
    while let Some((tcp, peer, _)) = crate::serve::accept(&listener, &shutdown, "admin", None).await
    {
        let state = Arc::clone(&state);
        let service = hyper::service::service_fn(move |req| {
            let state = Arc::clone(&state);
            async move { Ok::<_, Infallible>(handle(req, peer, &state).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(TokioIo::new(tcp), service);
        let conn = graceful.watch(conn);
        tracker.spawn(async move {
            if let Err(err) = conn.await {
                tracing::debug!(%peer, error = %err, "admin connection ended with an error");
            }
        });
    }
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("admin: grace period over; closing remaining connections");
    }
}

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET /healthz`.
    Healthz,
    /// `GET /readyz`.
    Readyz,
    /// `GET /faults`.
    GetFaults,
    /// `PUT /faults`.
    PutFaults,
    /// `GET /downloads?since=N&timeout_ms=T`.
    Downloads,
    /// `POST /packages/rescan`.
    Rescan,
    /// `GET /metrics`: Prometheus text format.
    Metrics,
    /// `GET /campaign`: the live campaign page.
    Campaign,
    /// `GET /campaign.json`: the campaign as JSON.
    CampaignJson,
}

impl Route {
    /// Whether the route changes the server or shows who downloads (403
    /// to peers not allowed by [`control_allowed`]).
    pub fn is_control(self) -> bool {
        !matches!(self, Route::Healthz | Route::Readyz | Route::Metrics)
    }
}

/// The one table of admin routes: `Err` carries 404 (unknown path) or 405
/// (known path, other method) with the methods the path takes.
pub fn route(method: &Method, path: &str) -> Result<Route, (StatusCode, &'static str)> {
    let get = method == Method::GET || method == Method::HEAD;
    match path {
        "/healthz" if get => Ok(Route::Healthz),
        "/readyz" if get => Ok(Route::Readyz),
        "/faults" if get => Ok(Route::GetFaults),
        "/faults" if method == Method::PUT => Ok(Route::PutFaults),
        "/downloads" if get => Ok(Route::Downloads),
        "/packages/rescan" if method == Method::POST => Ok(Route::Rescan),
        "/metrics" if get => Ok(Route::Metrics),
        "/campaign" if get => Ok(Route::Campaign),
        "/campaign.json" if get => Ok(Route::CampaignJson),
        "/healthz" | "/readyz" | "/downloads" | "/metrics" | "/campaign" | "/campaign.json" => {
            Err((StatusCode::METHOD_NOT_ALLOWED, "GET, HEAD"))
        }
        "/faults" => Err((StatusCode::METHOD_NOT_ALLOWED, "GET, HEAD, PUT")),
        "/packages/rescan" => Err((StatusCode::METHOD_NOT_ALLOWED, "POST")),
        _ => Err((StatusCode::NOT_FOUND, "")),
    }
}

/// Routes → the peer check and readiness for control routes → handler.
async fn handle(req: Request<Incoming>, peer: SocketAddr, state: &State) -> Response<AdminBody> {
    let route = match route(req.method(), req.uri().path()) {
        Ok(route) => route,
        Err((status, allow)) => {
            let mut resp = text(status, format!("{status}\n"));
            if !allow.is_empty() {
                resp.headers_mut()
                    .insert(ALLOW, HeaderValue::from_static(allow));
            }
            return resp;
        }
    };
    if route.is_control() && !control_allowed(peer.ip(), &state.allow) {
        tracing::warn!(%peer, path = req.uri().path(), "admin control request refused");
        return text(
            StatusCode::FORBIDDEN,
            format!(
                "control routes are refused from {}; allow it with --admin-allow\n",
                peer.ip()
            ),
        );
    }
    dispatch(route, req, state).await
}

/// Runs the handler of `route`; control routes need a ready server.
async fn dispatch(route: Route, req: Request<Incoming>, state: &State) -> Response<AdminBody> {
    let phase = state.phase();
    let control = match &phase {
        Phase::Ready(control) => Some(control),
        Phase::Waiting(control) | Phase::Stopping(Some(control)) if route == Route::Metrics => {
            Some(control)
        }
        Phase::Starting | Phase::Waiting(_) | Phase::Stopping(_) => None,
    };
    match (route, control) {
        (Route::Healthz, _) => text(StatusCode::OK, "ok\n".into()),
        (Route::Readyz, _) | (_, None) => {
            let (status, body) = readiness(&phase);
            json(status, &body)
        }
        (Route::GetFaults, Some(c)) => control::get_faults(c),
        (Route::PutFaults, Some(c)) => control::put_faults(c, req.into_body()).await,
        (Route::Downloads, Some(c)) => {
            control::downloads(c, req.uri().query(), &state.shutdown).await
        }
        (Route::Rescan, Some(c)) => control::rescan(c).await,
        (Route::Campaign, Some(c)) => campaign::respond(c, req.uri().query(), false),
        (Route::CampaignJson, Some(c)) => campaign::respond(c, req.uri().query(), true),
        (Route::Metrics, Some(c)) => with_type(
            StatusCode::OK,
            // What prometheus-client writes (`# EOF`, `_total` samples
            // of a `counter` family): OpenMetrics 1.0, not the 0.0.4 text
            // format, whose parsers would type every counter `unknown`.
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            c.metrics_text(),
        ),
    }
}

/// `/readyz`'s status and body for `phase`: once serving, the download
/// log must be writable too (a full disk: 503 naming `log`, with the
/// error under `"log"`).
fn readiness(phase: &Phase) -> (StatusCode, serde_json::Value) {
    match phase {
        // Not ready: an unwritable download log, or an object store never
        // reached (an empty catalog). A store lost later leaves the cached
        // packages served: ready, and said.
        Phase::Ready(control) | Phase::Waiting(control) => {
            let mut not_ready = Vec::new();
            let mut body = serde_json::Map::new();
            if let Some(error) = control.log().health().error {
                not_ready.push("log");
                body.insert("log".into(), error.into());
            }
            match control.catalog().source_health() {
                SourceHealth::Ok => {}
                SourceHealth::NotReached(why) => {
                    not_ready.push("store");
                    body.insert("store".into(), why.into());
                }
                SourceHealth::Unreachable(why) => {
                    body.insert("store".into(), why.into());
                }
            }
            let ready = not_ready.is_empty();
            body.insert("ready".into(), ready.into());
            if !ready {
                body.insert("not_ready".into(), serde_json::json!(not_ready));
            }
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            (status, serde_json::Value::Object(body))
        }
        Phase::Starting => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"ready": false, "not_ready": ["listeners", "catalog"]}),
        ),
        Phase::Stopping(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"ready": false, "not_ready": ["shutting down"]}),
        ),
    }
}

/// A `text/plain` response.
pub(crate) fn text(status: StatusCode, body: String) -> Response<AdminBody> {
    with_type(status, "text/plain; charset=utf-8", body)
}

/// A JSON response (one object and a newline).
pub(crate) fn json(status: StatusCode, value: &serde_json::Value) -> Response<AdminBody> {
    with_type(status, "application/json", format!("{value}\n"))
}

/// A response with `content_type` and `body`.
pub(crate) fn with_type(
    status: StatusCode,
    content_type: &'static str,
    body: String,
) -> Response<AdminBody> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_map_methods_and_paths_and_name_the_allowed_methods() {
        assert_eq!(route(&Method::GET, "/healthz"), Ok(Route::Healthz));
        assert_eq!(route(&Method::HEAD, "/readyz"), Ok(Route::Readyz));
        assert_eq!(route(&Method::PUT, "/faults"), Ok(Route::PutFaults));
        assert_eq!(route(&Method::GET, "/downloads"), Ok(Route::Downloads));
        assert_eq!(route(&Method::POST, "/packages/rescan"), Ok(Route::Rescan));
        assert_eq!(route(&Method::GET, "/campaign"), Ok(Route::Campaign));
        assert_eq!(
            route(&Method::HEAD, "/campaign.json"),
            Ok(Route::CampaignJson)
        );
        assert_eq!(
            route(&Method::POST, "/campaign"),
            Err((StatusCode::METHOD_NOT_ALLOWED, "GET, HEAD"))
        );
        assert_eq!(
            route(&Method::DELETE, "/faults"),
            Err((StatusCode::METHOD_NOT_ALLOWED, "GET, HEAD, PUT"))
        );
        assert_eq!(
            route(&Method::GET, "/packages/rescan"),
            Err((StatusCode::METHOD_NOT_ALLOWED, "POST"))
        );
        assert_eq!(
            route(&Method::GET, "/update.zip"),
            Err((StatusCode::NOT_FOUND, ""))
        );
        assert!(!Route::Healthz.is_control() && Route::Downloads.is_control());
        assert!(Route::Campaign.is_control() && !Route::Metrics.is_control());
    }

    #[test]
    fn control_is_loopback_only_unless_a_network_is_allowed() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let lan: IpNet = "192.0.2.0/24".parse().unwrap();
        assert!(control_allowed(ip("127.0.0.1"), &[]));
        assert!(control_allowed(ip("127.0.0.2"), &[]));
        assert!(control_allowed(ip("::1"), &[]));
        assert!(control_allowed(ip("::ffff:127.0.0.1"), &[]));
        assert!(!control_allowed(ip("192.0.2.7"), &[]));
        assert!(!control_allowed(ip("::ffff:192.0.2.7"), &[]));
        assert!(control_allowed(ip("192.0.2.7"), &[lan]));
        assert!(control_allowed(ip("::ffff:192.0.2.7"), &[lan]));
        assert!(!control_allowed(ip("198.51.100.1"), &[lan]));
    }
}
