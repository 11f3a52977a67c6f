//! The topology's HTTP endpoint: Prometheus metrics and health checks.
//!
//! - `GET /metrics`: every metric of the topology in the Prometheus text exposition format
//!   (version 0.0.4), from [`Metrics::registry`];
//! - `GET /healthz`: `200 ok` while the process serves requests (liveness);
//! - `GET /readyz`: `200 ready` while the topology is running, `503 not ready` before it starts
//!   and once it drains (readiness).
//!
//! Served by axum on a current-thread tokio runtime of its own thread, so that request handling
//! never competes with the dataflow's workers for their threads.
//!
//! ```no_run
//! use std::sync::Arc;
//! use weir_core::Metrics;
//! use weir_runtime::http::MetricsServer;
//!
//! let metrics = Arc::new(Metrics::new("fraud-scoring"));
//! let server = MetricsServer::start("127.0.0.1:9464", metrics).unwrap();
//! server.set_ready(true);
//! println!("scrape http://{}/metrics", server.addr());
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use weir_core::Metrics;

/// Errors starting the endpoint.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The address cannot be bound (in use, or not an address).
    #[error("metrics endpoint: cannot listen on `{addr}`: {detail}")]
    Bind {
        /// The configured address.
        addr: String,
        /// The OS error.
        detail: String,
    },
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
}

async fn metrics_text(State(s): State<AppState>) -> impl IntoResponse {
    s.metrics.ready.set(s.ready.load(Ordering::Acquire) as i64);
    match prometheus::TextEncoder::new().encode_to_string(&s.metrics.registry.gather()) {
        Ok(body) => (StatusCode::OK, [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], body),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            e.to_string(),
        ),
    }
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    if s.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// A running endpoint; stops when dropped.
pub struct MetricsServer {
    addr: SocketAddr,
    ready: Arc<AtomicBool>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MetricsServer {
    /// Binds `addr` (`host:port`; port 0 picks a free one) and serves in a thread of its own.
    /// Not ready until [`set_ready`](Self::set_ready).
    ///
    /// # Errors
    /// [`HttpError::Bind`] if the address cannot be bound.
    pub fn start(addr: &str, metrics: Arc<Metrics>) -> Result<Self, HttpError> {
        let bind_err = |e: std::io::Error| HttpError::Bind {
            addr: addr.to_string(),
            detail: e.to_string(),
        };
        let listener = std::net::TcpListener::bind(addr).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        let local = listener.local_addr().map_err(bind_err)?;
        let ready = Arc::new(AtomicBool::new(false));
        let state = AppState {
            metrics,
            ready: ready.clone(),
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("weir-http".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_io().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "metrics endpoint: cannot start its runtime");
                        return;
                    }
                };
                rt.block_on(async move {
                    let app = Router::new()
                        .route("/metrics", get(metrics_text))
                        .route("/healthz", get(|| async { "ok\n" }))
                        .route("/readyz", get(readyz))
                        .with_state(state);
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::error!(error = %e, "metrics endpoint: cannot listen");
                            return;
                        }
                    };
                    let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                        let _ = stopped.await;
                    });
                    if let Err(e) = serve.await {
                        tracing::error!(error = %e, "metrics endpoint failed");
                    }
                });
            })
            .map_err(bind_err)?;
        tracing::info!(addr = %local, "metrics endpoint: /metrics, /healthz, /readyz");
        Ok(Self {
            addr: local,
            ready,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets what `/readyz` answers.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// The readiness flag, to share with whatever decides it.
    pub fn ready_flag(&self) -> Arc<AtomicBool> {
        self.ready.clone()
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let status = out.split(' ').nth(1).unwrap().parse().unwrap();
        let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        (status, body)
    }

    #[test]
    fn serves_metrics_health_and_readiness() {
        let metrics = Arc::new(Metrics::new("t"));
        metrics.events_in.inc_by(42);
        let server = MetricsServer::start("127.0.0.1:0", metrics.clone()).unwrap();
        let (status, body) = get(server.addr(), "/metrics");
        assert_eq!(status, 200);
        assert!(
            body.contains("weir_source_events_total{operator=\"source\",topology=\"t\"} 42"),
            "{body}"
        );
        assert_eq!(get(server.addr(), "/healthz").0, 200);
        assert_eq!(get(server.addr(), "/readyz").0, 503);
        server.set_ready(true);
        assert_eq!(get(server.addr(), "/readyz").0, 200);
        assert_eq!(get(server.addr(), "/nope").0, 404);
        let addr = server.addr();
        drop(server);
        assert!(std::net::TcpStream::connect(addr).is_err(), "stopped on drop");
    }

    #[test]
    fn a_busy_address_is_named() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let e = MetricsServer::start(&addr, Arc::new(Metrics::new("t")))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains(&addr), "{e}");
    }
}
