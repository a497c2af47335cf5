//! The HTTP side: the router, the state handlers share, the JSON API (`api_v1`) and the
//! approval pages (`approval_pages`, with `templates/`).
//!
//! I/O shell; the only place that knows axum. Handlers parse requests and render answers; the
//! work is done by `ops`.

pub mod api_v1;
pub mod approval_pages;
pub mod auth;
pub mod json;
pub mod qstash;
pub mod server;
pub mod state;

pub use server::Limits;
pub use state::{AppState, DaemonParts, Shared};

use axum::Router;
use axum::routing::get;

/// Every route: `/healthz`, `/metrics`, the approval pages, `/api/v1` and QStash's `/v2`.
pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/healthz", get(api_v1::healthz))
        .route("/metrics", get(api_v1::metrics))
        .route(
            "/approvals/{token}",
            get(approval_pages::show).post(approval_pages::submit_link),
        )
        .nest("/api/v1", api_v1::routes(state.clone()))
        .nest("/v2", qstash::routes(state.clone()))
        .with_state(state)
}

/// Serves `app` on `listener` within `limits` (see `server`) until `shutdown` completes, then
/// lets the answers being sent finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    server::serve(listener, app, limits, shutdown).await
}
