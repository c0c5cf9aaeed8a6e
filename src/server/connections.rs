//! Accepting connections, bounded in time and number: HTTP/1.1 only, a deadline for each
//! request's headers (which also closes idle keep-alive connections, since the deadline runs
//! while the connection waits for its next request), and a cap on open connections past which
//! a new one is answered 503 and closed. Slow, idle or flooding clients therefore cannot hold
//! file descriptors or memory; the request body's own deadline is in [`super::http`].

use super::api::ApiError;
use axum::http::StatusCode;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

/// Connections being refused at once; past this a connection over the cap is dropped unanswered.
const MAX_REFUSING: usize = 64;
/// How long a refusal waits to write its 503 and for the client to finish sending.
const REFUSAL_GRACE: Duration = Duration::from_secs(1);
/// Pause after an accept error (out of file descriptors, say) before accepting again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Bounds on connections.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Most connections open at once; a connection past the cap gets a 503 and is closed.
    pub max_connections: usize,
    /// Longest wait for a request's complete headers, counted from when the connection is
    /// ready for its next request (so an idle keep-alive connection closes after it too).
    pub header_timeout: Duration,
}

/// Serves `app` on `listener` until `shutdown` completes, then stops accepting, lets each open
/// connection finish its request in flight and returns once all have closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) {
    let max = limits.max_connections.clamp(1, u32::MAX as usize);
    let open = Arc::new(Semaphore::new(max));
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let (stop, stopped) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if let Ok(permit) = Arc::clone(&open).try_acquire_owned() {
            let connection = connection(stream, app.clone(), limits, permit, stopped.clone());
            tokio::spawn(connection);
        } else if let Ok(permit) = Arc::clone(&refusing).try_acquire_owned() {
            tokio::spawn(refuse(stream, max, permit));
        }
    }
    drop(listener);
    let _ = stop.send(true);
    // Every connection holds a permit until it closes.
    let _ = open.acquire_many(max as u32).await;
}

/// Serves one connection; on shutdown, finishes the request in flight and closes.
async fn connection(
    stream: TcpStream,
    app: Router,
    limits: ConnectionLimits,
    _permit: OwnedSemaphorePermit,
    mut stopped: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let service = TowerToHyperService::new(app);
    let mut conn = std::pin::pin!(builder.serve_connection(TokioIo::new(stream), service));
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!("connection closed: {e}");
            }
            return;
        }
        _ = stopped.wait_for(|&stop| stop) => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// Answers a connection over the cap with a 503 in OpenAI's error shape and closes it, reading
/// what the client sends meanwhile so that closing does not reset the connection (which could
/// discard the answer before the client reads it).
async fn refuse(mut stream: TcpStream, max: usize, _permit: OwnedSemaphorePermit) {
    let error = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("too many connections: the server keeps at most {max} open; retry later"),
    );
    let body = error.body().to_string();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let answer = async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        std::io::Result::Ok(())
    };
    let _ = tokio::time::timeout(REFUSAL_GRACE, answer).await;
}
