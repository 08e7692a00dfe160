//! `taft serve`: an HTTP server (tokio + axum) over an export output on ONNX Runtime.
//!
//! - `POST /v1/predict` takes `{"conversations": [{"texts": [...], "authors": [...]}]}` or
//!   `{"texts": [...]}` and answers, per item and task, the label, its class name and the
//!   class probabilities.
//! - `GET /health` (the process is alive), `GET /ready` (the model is loaded and the server
//!   is not draining), `GET /metrics` (Prometheus text).
//! - Requests are batched across connections: the batcher takes queued items until
//!   `max_batch_size` or `max_wait_ms`, runs them at once and answers each request its part.
//!   Items share a run only where the padding costs less than the run it saves, as measured
//!   for the model on this machine when it loads ([`Exported::calibrate`]).
//!   The model runs on a thread of its own, woken by the queue; requests are parsed and
//!   answered on the runtime's workers. A model too small to split over threads runs as
//!   several instances, a session and a runner thread each, sharing the queue
//!   ([`Exported::calibrate`]). The queue holds at most `queue_items` items; beyond
//!   that a request gets 503.
//!   Work of a request whose client has gone or whose deadline (`request_timeout_ms`) has
//!   passed is dropped before it reaches the model.
//! - Limits: body size (413), items per request (413: texts, conversations, or the
//!   utterances a speaker-role model scores), text length (422); malformed JSON is 400 and a
//!   wrong type 422, each with a JSON body naming the limit or the field. Every error is JSON,
//!   404 and 405 included; a 503 carries `Retry-After`.
//! - Timeouts: request headers (`header_timeout_ms`, then the connection closes), the body
//!   (`body_timeout_ms`, 408), the answer (`request_timeout_ms`, 504); at most
//!   `max_connections` connections are open (more wait in the listen backlog).
//! - SIGTERM (or Ctrl-C) drains for rollouts: `/ready` answers 503 at once while requests are
//!   still served for `drain_delay_s` (endpoints stop routing here meanwhile), then the
//!   listener closes and requests in flight finish, within `request_timeout_ms`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use prometheus::{Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use super::items::{self, Item};
use super::{Exported, Variant};
use crate::data::ConvId;
use crate::error::{Error, Result};

/// The server's settings (`taft serve --config FILE --set key=value`).
pub const DEFAULTS: &str = "
host: 127.0.0.1
port: 8080
model: fp32
max_batch_size: 32
max_wait_ms: 0
queue_items: 2048
max_body_bytes: 1048576
max_items: 256
max_text_chars: 20000
header_timeout_ms: 5000
body_timeout_ms: 10000
request_timeout_ms: 30000
max_connections: 1024
drain_delay_s: 5
";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    pub host: String,
    pub port: u16,
    /// `fp32` (model.onnx) or `int8` (model.int8.onnx).
    pub model: Variant,
    /// Items run together at most.
    pub max_batch_size: usize,
    /// How long the batcher waits for more items once it has one (0: it runs what is queued
    /// as soon as the model is free; items that come meanwhile go into the next run).
    pub max_wait_ms: u64,
    /// Items waiting at most; a request that would exceed it gets 503.
    pub queue_items: usize,
    /// Largest request body (bytes): 413 beyond.
    pub max_body_bytes: usize,
    /// Items per request at most (texts, conversations, or the utterances a speaker-role
    /// model scores): 413 beyond.
    pub max_items: usize,
    /// Characters per text at most: 422 beyond.
    pub max_text_chars: usize,
    /// A client must send a request's headers within this time, or the connection closes.
    pub header_timeout_ms: u64,
    /// A client must send the whole body within this time: 408 beyond.
    pub body_timeout_ms: u64,
    /// A request not answered within this time gets 504, and its work is dropped.
    pub request_timeout_ms: u64,
    /// Open connections at most; more wait in the listen backlog.
    pub max_connections: usize,
    /// After SIGTERM, how long requests are still taken while `/ready` says 503.
    pub drain_delay_s: u64,
    /// ONNX Runtime's threads (default: the CPUs this process may use, cgroup quota and
    /// affinity included).
    #[serde(default)]
    pub threads: Option<usize>,
    /// Padding tokens an item may add to a run it joins (default: measured at load,
    /// [`Exported::calibrate`]); a number fixes it, the same on every machine.
    #[serde(default)]
    pub join_tokens: Option<usize>,
    /// Sessions of the model running at once, `threads` shared among them (default: chosen
    /// at load, [`Exported::calibrate`]: one per thread for a model too small to split over
    /// threads, else one).
    #[serde(default)]
    pub instances: Option<usize>,
}

impl ServeConfig {
    pub fn validate(&self) -> Result<()> {
        let checks = [
            ("max_batch_size", self.max_batch_size, 1, 4096),
            ("max_wait_ms", self.max_wait_ms as usize, 0, 10_000),
            ("queue_items", self.queue_items, 1, 1 << 24),
            ("max_body_bytes", self.max_body_bytes, 2, 1 << 30),
            ("max_items", self.max_items, 1, 1 << 20),
            ("max_text_chars", self.max_text_chars, 1, 1 << 24),
            ("header_timeout_ms", self.header_timeout_ms as usize, 1, 3_600_000),
            ("body_timeout_ms", self.body_timeout_ms as usize, 1, 3_600_000),
            ("request_timeout_ms", self.request_timeout_ms as usize, 1, 3_600_000),
            ("max_connections", self.max_connections, 1, 1 << 20),
            ("drain_delay_s", self.drain_delay_s as usize, 0, 3600),
        ];
        for (name, v, lo, hi) in checks {
            if !(lo..=hi).contains(&v) {
                return Err(Error::config(format!("{name} {v} is out of range {lo}..={hi}")));
            }
        }
        if self.max_items > self.queue_items {
            return Err(Error::config(format!(
                "max_items {} exceeds queue_items {}: such a request could never be queued",
                self.max_items, self.queue_items
            )));
        }
        if self.threads.is_some_and(|t| !(1..=1024).contains(&t)) {
            return Err(Error::config("threads must be in 1..=1024"));
        }
        if self.instances.is_some_and(|k| !(1..=1024).contains(&k)) {
            return Err(Error::config("instances must be in 1..=1024"));
        }
        if self.join_tokens.is_some_and(|t| t > 1 << 20) {
            return Err(Error::config("join_tokens must be in 0..=1048576"));
        }
        Ok(())
    }
}

/// Runs the server until SIGTERM or Ctrl-C; prints `serve: listening on http://ADDR` once
/// bound. The model loads in the background (`/ready` says when); a model that fails to
/// load stops the server with its error.
pub async fn serve(model_url: &str, config: ServeConfig) -> Result<()> {
    config.validate()?;
    let listener = tokio::net::TcpListener::bind((config.host.as_str(), config.port))
        .await
        .map_err(|e| Error::config(format!("cannot listen on {}:{}: {e}", config.host, config.port)))?;
    let addr = listener.local_addr()?;
    let (tx, rx) = mpsc::channel::<Job>(config.queue_items);
    let state = Arc::new(AppState {
        model: OnceLock::new(),
        queue: tx,
        queued: AtomicUsize::new(0),
        draining: AtomicBool::new(false),
        batcher_alive: AtomicBool::new(true),
        metrics: Metrics::new()?,
        config: config.clone(),
    });
    // The model runs on a thread of its own: a request queued wakes it, and it runs the model
    // there, without handing the run to another thread and back. Each further instance of the
    // model gets a runner of its own once the model is loaded; they share the queue.
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    runner(Arc::clone(&state), Arc::clone(&rx), 0)?;
    let app = router(Arc::clone(&state));
    {
        // The line is for whoever reads stdout; a reader gone away does not stop the server.
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "serve: listening on http://{addr}").and_then(|()| stdout.flush());
    }
    tracing::info!(%addr, model = model_url, "listening");

    let load = {
        let state = Arc::clone(&state);
        let url = model_url.to_string();
        async move {
            let started = Instant::now();
            let mut model = Exported::open(&url, state.config.model, state.config.threads).await?;
            // How many sessions run at once and what batching is worth, for this model on this
            // machine, decide how runs are cut and run, unless the config fixes them.
            let (instances, join) = (state.config.instances, state.config.join_tokens);
            let model = tokio::task::spawn_blocking(move || {
                model.calibrate(instances, join, crate::infer::SERVE_CALIBRATION_SECONDS).map(|_| model)
            })
            .await
            .map_err(|e| Error::Other(format!("model calibration: {e}")))??;
            tracing::info!(model = %url, heads = ?model.head_names(), instances = model.instances, threads = model.threads, join_tokens = model.join_tokens, seconds = started.elapsed().as_secs_f64(), "model loaded");
            state.metrics.join_tokens.set(model.join_tokens.map_or(-1, |t| t.min(i64::MAX as usize) as i64));
            state.metrics.instances.set(model.instances as i64);
            let instances = model.instances;
            let _ = state.model.set(Arc::new(model));
            for instance in 1..instances {
                runner(Arc::clone(&state), Arc::clone(&rx), instance)?;
            }
            state.metrics.ready.set(1);
            std::future::pending::<Result<()>>().await
        }
    };
    tokio::select! {
        r = accept(listener, app, Arc::clone(&state)) => r?,
        r = load => r?,
    }
    tracing::info!("stopped");
    Ok(())
}

/// Starts the thread that runs the model's session `instance` on what it takes from the queue.
fn runner(state: Arc<AppState>, rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Job>>>, instance: usize) -> Result<()> {
    let fail = |e: std::io::Error| Error::Other(format!("model runner: {e}"));
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().map_err(fail)?;
    std::thread::Builder::new()
        .name(format!("taft-model-{instance}"))
        .spawn(move || rt.block_on(batcher(state, rx, instance)))
        .map_err(fail)?;
    Ok(())
}

/// Serves connections until SIGTERM, then drains: `/ready` turns 503, connections are still
/// taken for `drain_delay_s`, then the listener closes and open connections finish their
/// requests (bounded by `request_timeout_ms`).
async fn accept(listener: tokio::net::TcpListener, app: Router, state: Arc<AppState>) -> Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let config = &state.config;
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(config.max_connections));
    let signal = crate::runtime::terminated();
    tokio::pin!(signal);
    let mut close_at: Option<tokio::time::Instant> = None;
    loop {
        let closing = async {
            match close_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        // A connection slot first, then a connection: beyond `max_connections` clients
        // wait in the listen backlog.
        let next = async {
            let permit = Arc::clone(&slots).acquire_owned().await;
            (permit, listener.accept().await)
        };
        tokio::select! {
            _ = &mut signal, if close_at.is_none() => {
                state.draining.store(true, Ordering::SeqCst);
                state.metrics.ready.set(0);
                tracing::info!(drain_delay_s = config.drain_delay_s, "draining: /ready answers 503, requests still taken");
                close_at = Some(tokio::time::Instant::now() + Duration::from_secs(config.drain_delay_s));
            }
            _ = closing => break,
            (permit, accepted) = next => {
                let Ok(permit) = permit else { break };
                let stream = match accepted {
                    // Answers go out as soon as they are written, not held back by Nagle's
                    // algorithm until the client's delayed ACK of the previous segment.
                    Ok((stream, _)) => {
                        let _ = stream.set_nodelay(true);
                        stream
                    }
                    Err(e) => {
                        // Out of file descriptors, or a connection reset before accept.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let service = hyper_util::service::TowerToHyperService::new(app.clone());
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_millis(config.header_timeout_ms))
                    .serve_connection(TokioIo::new(stream), service);
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(error = %e, "connection closed");
                    }
                    drop(permit);
                });
            }
        }
    }
    drop(listener);
    tracing::info!("listener closed: finishing requests in flight");
    let window = Duration::from_millis(config.request_timeout_ms.saturating_add(1000));
    if tokio::time::timeout(window, graceful.shutdown()).await.is_err() {
        tracing::warn!("connections still open after request_timeout_ms: closing them");
    }
    Ok(())
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/predict", post(predict))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .fallback(|req: Request| async move {
            error(StatusCode::NOT_FOUND, &format!("no such path: {}", req.uri().path()), None)
        })
        .method_not_allowed_fallback(|req: Request| async move {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                &format!("{} is not allowed on {}", req.method(), req.uri().path()),
                None,
            )
        })
        .layer(middleware::from_fn_with_state(Arc::clone(&state), track))
        .with_state(state)
}

struct AppState {
    model: OnceLock<Arc<Exported>>,
    queue: mpsc::Sender<Job>,
    /// Items waiting for the batcher.
    queued: AtomicUsize,
    draining: AtomicBool,
    /// False once the batcher task has ended (a bug): `/ready` then answers 503.
    batcher_alive: AtomicBool,
    metrics: Metrics,
    config: ServeConfig,
}

/// One request's items waiting for the batcher.
struct Job {
    texts: Vec<Vec<String>>,
    /// Its items still count in the queue: whoever clears this (the batcher taking the job,
    /// or the request giving up) releases them.
    queued: Arc<AtomicBool>,
    /// After this the request has been answered 504: its work is dropped.
    deadline: tokio::time::Instant,
    reply: Reply,
}

/// A request's items reserved in the queue; released when the request gives up (its client
/// went away, its deadline passed) if the batcher has not taken them yet.
struct Reservation<'a> {
    state: &'a AppState,
    items: usize,
    queued: Arc<AtomicBool>,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.queued.swap(false, Ordering::SeqCst) {
            let left = self.state.queued.fetch_sub(self.items, Ordering::SeqCst) - self.items;
            self.state.metrics.queue.set(left as i64);
        }
    }
}

impl Job {
    /// Nobody waits for this answer any more: the client went away or its deadline passed.
    fn abandoned(&self, now: tokio::time::Instant) -> bool {
        self.reply.is_closed() || now >= self.deadline
    }
}

struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    batch: Histogram,
    queue: IntGauge,
    ready: IntGauge,
    dropped: prometheus::IntCounter,
    runs: prometheus::IntCounter,
    join_tokens: IntGauge,
    instances: IntGauge,
    instance_runs: IntCounterVec,
}

impl Metrics {
    fn new() -> Result<Metrics> {
        let fail = |e: prometheus::Error| Error::Other(format!("metrics: {e}"));
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("taft_http_requests_total", "HTTP requests by path and status code"),
            &["path", "status"],
        )
        .map_err(fail)?;
        let latency = HistogramVec::new(
            HistogramOpts::new("taft_http_request_duration_seconds", "HTTP request latency by path")
                .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &["path"],
        )
        .map_err(fail)?;
        let batch = Histogram::with_opts(
            HistogramOpts::new("taft_batch_items", "Items the batcher takes at a time (dynamic batching)")
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0]),
        )
        .map_err(fail)?;
        let queue = IntGauge::new("taft_queue_items", "Items waiting for the model").map_err(fail)?;
        let ready = IntGauge::new("taft_model_ready", "1 when the model is loaded and the server takes requests")
            .map_err(fail)?;
        let dropped = prometheus::IntCounter::new(
            "taft_dropped_items_total",
            "Queued items dropped unscored: their client went away or their deadline passed",
        )
        .map_err(fail)?;
        registry.register(Box::new(requests.clone())).map_err(fail)?;
        registry.register(Box::new(latency.clone())).map_err(fail)?;
        registry.register(Box::new(batch.clone())).map_err(fail)?;
        registry.register(Box::new(queue.clone())).map_err(fail)?;
        registry.register(Box::new(ready.clone())).map_err(fail)?;
        let runs = prometheus::IntCounter::new("taft_model_runs_total", "Model runs (a run scores a batch of items)")
            .map_err(fail)?;
        let join_tokens = IntGauge::new(
            "taft_join_tokens",
            "Padding tokens one run saved is worth, measured at load: an item joins a run only if it adds no more (-1: not measured)",
        )
        .map_err(fail)?;
        registry.register(Box::new(dropped.clone())).map_err(fail)?;
        registry.register(Box::new(runs.clone())).map_err(fail)?;
        registry.register(Box::new(join_tokens.clone())).map_err(fail)?;
        let instances = IntGauge::new("taft_model_instances", "Sessions of the model running at once, chosen at load")
            .map_err(fail)?;
        registry.register(Box::new(instances.clone())).map_err(fail)?;
        let instance_runs = IntCounterVec::new(
            Opts::new("taft_instance_runs_total", "Model runs by instance of the model"),
            &["instance"],
        )
        .map_err(fail)?;
        registry.register(Box::new(instance_runs.clone())).map_err(fail)?;
        Ok(Metrics {
            registry,
            requests,
            latency,
            batch,
            queue,
            ready,
            dropped,
            runs,
            join_tokens,
            instances,
            instance_runs,
        })
    }
}

/// Counts, times and logs every request (never its body).
async fn track(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let path = match req.uri().path() {
        p @ ("/v1/predict" | "/health" | "/ready" | "/metrics") => p.to_string(),
        _ => "other".to_string(),
    };
    let response = next.run(req).await;
    let seconds = started.elapsed().as_secs_f64();
    let status = response.status().as_u16();
    state.metrics.requests.with_label_values(&[path.as_str(), &status.to_string()]).inc();
    state.metrics.latency.with_label_values(&[path.as_str()]).observe(seconds);
    if path != "/metrics" && path != "/health" {
        tracing::info!(method = %method, path = %path, status, ms = seconds * 1000.0, "request");
    }
    response
}

/// Liveness: the process serves, unless its model runner has ended, which nothing but a
/// restart mends.
async fn health(State(state): State<Arc<AppState>>) -> Response {
    if !state.batcher_alive.load(Ordering::SeqCst) {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the model runner stopped", None);
    }
    Json(json!({"status": "ok"})).into_response()
}

async fn ready(State(state): State<Arc<AppState>>) -> Response {
    if state.draining.load(Ordering::SeqCst) {
        return error(StatusCode::SERVICE_UNAVAILABLE, "draining", None);
    }
    if !state.batcher_alive.load(Ordering::SeqCst) {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the model runner stopped", None);
    }
    match state.model.get() {
        Some(m) => {
            Json(json!({"status": "ready", "model": m.url, "variant": m.variant, "instances": m.instances, "threads": m.threads * m.instances}))
                .into_response()
        }
        None => error(StatusCode::SERVICE_UNAVAILABLE, "the model is loading", None),
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let mut buf = Vec::new();
    if let Err(e) = prometheus::TextEncoder::new().encode(&state.metrics.registry.gather(), &mut buf) {
        return error(StatusCode::INTERNAL_SERVER_ERROR, &format!("metrics: {e}"), None);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], buf).into_response()
}

/// A JSON error body: `{"error": message, "limit": name?}`; a 503 says when to retry.
fn error(status: StatusCode, message: &str, limit: Option<(&str, usize)>) -> Response {
    let mut body = json!({"error": message});
    if let Some((name, value)) = limit {
        body["limit"] = json!({"name": name, "value": value});
    }
    let mut response = (status, Json(body)).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static(RETRY_AFTER_S));
    }
    response
}

/// Seconds a client refused with 503 should wait.
const RETRY_AFTER_S: &str = "1";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PredictRequest {
    #[serde(default)]
    conversations: Option<Vec<ConversationIn>>,
    #[serde(default)]
    texts: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConversationIn {
    texts: Vec<String>,
    #[serde(default)]
    authors: Option<Vec<u8>>,
    #[serde(default)]
    id: Option<serde_json::Value>,
}

/// Where each request item's predictions come from: item indexes into the job's texts.
enum Shape {
    /// One prediction per item (texts, or conversations of a conversation-level model).
    Flat,
    /// Per conversation, the utterances scored (a speaker-role model): (utterance, index).
    Utterances(Vec<Vec<(i32, usize)>>),
}

async fn predict(State(state): State<Arc<AppState>>, req: Request) -> Response {
    // Requests are still taken while draining: endpoints stop routing here during
    // `drain_delay_s`, and the listener closes after it.
    let Some(model) = state.model.get().cloned() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the model is loading", None);
    };
    let limits = &state.config;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(limits.request_timeout_ms);
    let body = axum::body::to_bytes(req.into_body(), limits.max_body_bytes);
    let bytes = match tokio::time::timeout(Duration::from_millis(limits.body_timeout_ms), body).await {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the request body exceeds max_body_bytes ({} bytes)", limits.max_body_bytes),
                Some(("max_body_bytes", limits.max_body_bytes)),
            )
        }
        Err(_) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                &format!("the request body was not received within body_timeout_ms ({} ms)", limits.body_timeout_ms),
                Some(("body_timeout_ms", limits.body_timeout_ms as usize)),
            )
        }
    };
    let de = &mut serde_json::Deserializer::from_slice(&bytes);
    let body: PredictRequest = match serde_path_to_error::deserialize(de) {
        Ok(b) => b,
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            return if inner.is_syntax() || inner.is_eof() {
                error(StatusCode::BAD_REQUEST, &format!("malformed JSON: {inner}"), None)
            } else if path == "." {
                error(StatusCode::UNPROCESSABLE_ENTITY, &format!("body: {inner}"), None)
            } else {
                error(StatusCode::UNPROCESSABLE_ENTITY, &format!("field `{path}`: {inner}"), None)
            };
        }
    };
    let (items, shape, ids) = match request_items(body, &model, limits) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let texts: Vec<Vec<String>> = items.into_iter().map(|i| i.text).collect();
    let n = texts.len();
    let probs = if n == 0 {
        // A speaker-role request without customer or operator utterances: nothing to score.
        model.heads.iter().map(|_| Vec::new()).collect()
    } else {
        match queue_and_wait(&state, texts, deadline).await {
            Ok(p) => p,
            Err(r) => return r,
        }
    };
    answer(&model, &probs, n, shape, ids)
}

/// Queues a request's texts for the batcher and waits for their probabilities until
/// `deadline`; the error is the response to send.
async fn queue_and_wait(
    state: &AppState,
    texts: Vec<Vec<String>>,
    deadline: tokio::time::Instant,
) -> std::result::Result<super::Probs, Response> {
    let limits = &state.config;
    let n = texts.len();
    let stopped = || error(StatusCode::SERVICE_UNAVAILABLE, "the model runner stopped", None);
    if !state.batcher_alive.load(Ordering::SeqCst) {
        return Err(stopped());
    }
    // Reserve room in the bounded queue, or refuse.
    let reserved = state
        .queued
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |q| (q + n <= limits.queue_items).then_some(q + n));
    if reserved.is_err() {
        return Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("the queue is full (queue_items {}): retry later", limits.queue_items),
            Some(("queue_items", limits.queue_items)),
        ));
    }
    state.metrics.queue.set(state.queued.load(Ordering::SeqCst) as i64);
    let reservation = Reservation { state, items: n, queued: Arc::new(AtomicBool::new(true)) };
    let (reply, answer) = oneshot::channel();
    let job = Job { texts, queued: Arc::clone(&reservation.queued), deadline, reply };
    if state.queue.send(job).await.is_err() {
        return Err(stopped());
    }
    match tokio::time::timeout_at(deadline, answer).await {
        Ok(Ok(Ok(p))) => Ok(p),
        Ok(Ok(Err(e))) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, &e, None)),
        // A reply dropped unanswered: the runner died holding it (it marks itself stopped
        // before its jobs are dropped) or a run of it failed.
        Ok(Err(_)) if !state.batcher_alive.load(Ordering::SeqCst) => Err(stopped()),
        Ok(Err(_)) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, "the model run failed", None)),
        Err(_) => Err(error(
            StatusCode::GATEWAY_TIMEOUT,
            &format!("not answered within request_timeout_ms ({} ms)", limits.request_timeout_ms),
            Some(("request_timeout_ms", limits.request_timeout_ms as usize)),
        )),
    }
}

/// The answer to a request: per item (or per conversation's utterance), each head's label,
/// class and probabilities.
fn answer(
    model: &Exported,
    probs: &super::Probs,
    n: usize,
    shape: Shape,
    ids: Vec<Option<serde_json::Value>>,
) -> Response {
    let one = |i: usize| {
        let mut tasks = serde_json::Map::new();
        for (h, (name, classes)) in model.heads.iter().enumerate() {
            let p = &probs[h][i];
            let best = super::argmax(p);
            tasks.insert(name.clone(), json!({"label": best, "class": classes[best], "probabilities": p}));
        }
        serde_json::Value::Object(tasks)
    };
    let mut predictions: Vec<serde_json::Value> = match shape {
        Shape::Flat => (0..n).map(one).collect(),
        Shape::Utterances(conversations) => conversations
            .iter()
            .map(|utts| {
                json!({"utterances": utts.iter().map(|&(u, i)| {
                    let mut p = one(i);
                    p["utterance"] = json!(u);
                    p
                }).collect::<Vec<_>>()})
            })
            .collect(),
    };
    for (p, id) in predictions.iter_mut().zip(ids) {
        if let Some(id) = id {
            p["id"] = id;
        }
    }
    let classes: serde_json::Map<String, serde_json::Value> =
        model.heads.iter().map(|(n, c)| (n.clone(), json!(c))).collect();
    Json(json!({"classes": classes, "predictions": predictions})).into_response()
}

/// A request's items, how its answer is shaped, and the conversation ids it gave.
type RequestItems = (Vec<Item>, Shape, Vec<Option<serde_json::Value>>);

/// The items of a request, checked against the limits; the error is the response to send.
#[allow(clippy::result_large_err)]
fn request_items(
    body: PredictRequest,
    model: &Exported,
    limits: &ServeConfig,
) -> std::result::Result<RequestItems, Response> {
    let unprocessable = |msg: String| error(StatusCode::UNPROCESSABLE_ENTITY, &msg, None);
    let too_long = |field: String| {
        error(
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!("field `{field}`: longer than max_text_chars ({} characters)", limits.max_text_chars),
            Some(("max_text_chars", limits.max_text_chars)),
        )
    };
    let too_many = |n: usize| {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("{n} items exceed max_items ({}) per request", limits.max_items),
            Some(("max_items", limits.max_items)),
        )
    };
    let check_text = |t: &str, field: String| -> std::result::Result<(), Response> {
        if t.trim().is_empty() {
            return Err(unprocessable(format!("field `{field}`: empty text")));
        }
        if t.chars().count() > limits.max_text_chars {
            return Err(too_long(field));
        }
        Ok(())
    };
    match (body.conversations, body.texts) {
        (Some(_), Some(_)) | (None, None) => {
            Err(unprocessable("give either `conversations` or `texts`, not both or neither".into()))
        }
        (None, Some(texts)) => {
            if texts.is_empty() {
                return Err(unprocessable("field `texts`: empty list".into()));
            }
            if texts.len() > limits.max_items {
                return Err(too_many(texts.len()));
            }
            let mut items = Vec::with_capacity(texts.len());
            for (i, t) in texts.into_iter().enumerate() {
                check_text(&t, format!("texts[{i}]"))?;
                items.push(Item { id: ConvId::Int(i as i64), utterance: None, text: vec![t] });
            }
            Ok((items, Shape::Flat, Vec::new()))
        }
        (Some(conversations), None) => {
            if conversations.is_empty() {
                return Err(unprocessable("field `conversations`: empty list".into()));
            }
            if conversations.len() > limits.max_items {
                return Err(too_many(conversations.len()));
            }
            let mut items = Vec::new();
            let mut groups = Vec::new();
            let mut ids = Vec::new();
            for (c, conv) in conversations.into_iter().enumerate() {
                if conv.texts.is_empty() {
                    return Err(unprocessable(format!("field `conversations[{c}].texts`: empty list")));
                }
                for (i, t) in conv.texts.iter().enumerate() {
                    check_text(t, format!("conversations[{c}].texts[{i}]"))?;
                }
                if let Some(a) = &conv.authors {
                    if a.len() != conv.texts.len() {
                        return Err(unprocessable(format!(
                            "field `conversations[{c}].authors`: {} authors for {} texts",
                            a.len(),
                            conv.texts.len()
                        )));
                    }
                    if let Some(i) = a.iter().position(|s| !(1..=crate::data::MAX_AUTHOR).contains(s)) {
                        return Err(unprocessable(format!(
                            "field `conversations[{c}].authors[{i}]`: {} is not a speaker (1 alert, 2 customer, 3 operator)",
                            a[i]
                        )));
                    }
                }
                ids.push(conv.id);
                let id = ConvId::Int(c as i64);
                let start = items.len();
                items.extend(items::of_conversation(&id, &conv.texts, conv.authors.as_deref(), model.utterance_level));
                groups.push((start..items.len()).map(|k| (items[k].utterance.unwrap_or(0), k)).collect::<Vec<_>>());
            }
            // A speaker-role model scores each customer and operator utterance: those count.
            if items.len() > limits.max_items {
                return Err(too_many(items.len()));
            }
            let shape = if model.utterance_level { Shape::Utterances(groups) } else { Shape::Flat };
            Ok((items, shape, ids))
        }
    }
}

/// How many runs of `max_batch_size` the batcher takes at most from what is already queued.
const DRAIN_BATCHES: usize = 8;

/// Takes queued requests until `max_batch_size` items or `max_wait_ms` (then whatever else is
/// already queued, up to [`DRAIN_BATCHES`] runs, or none when other instances of the model
/// share the queue) and scores them on the session of `instance`: cuts them by length into
/// runs of at most `max_batch_size` with little padding, runs first the run that holds the
/// oldest request (age before length: no request waits behind younger ones), and answers each
/// request as soon as its items are scored.
async fn batcher(state: Arc<AppState>, rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Job>>>, instance: usize) {
    // Whichever way this task ends, `/ready` says so.
    struct Alive<'a>(&'a AppState, bool);
    impl Drop for Alive<'_> {
        fn drop(&mut self) {
            // `true`: only when it ends by a panic.
            if !self.1 || std::thread::panicking() {
                self.0.batcher_alive.store(false, Ordering::SeqCst);
                self.0.metrics.ready.set(0);
            }
        }
    }
    let _alive = Alive(&state, false);
    let max_batch = state.config.max_batch_size;
    let wait = Duration::from_millis(state.config.max_wait_ms);
    loop {
        // One runner at a time takes from the queue; the others wait for their turn.
        let mut rx = rx.lock().await;
        let Some(first) = rx.recv().await else { break };
        let mut jobs = vec![first];
        // Dropped before `jobs` when a panic unwinds: the probes say the runner stopped
        // before its requests learn that their run failed.
        let _dying = Alive(&state, true);
        fail::fail_point!("serve::batcher");
        let mut n = jobs[0].texts.len();
        let deadline = tokio::time::Instant::now() + wait;
        while n < max_batch {
            // Without a wait, what is queued now: a timer set to now fires at the timer's
            // next tick (up to a millisecond later), not at once.
            let next = if wait.is_zero() {
                rx.try_recv().ok()
            } else {
                tokio::time::timeout_at(deadline, rx.recv()).await.ok().flatten()
            };
            let Some(job) = next else { break };
            n += job.texts.len();
            jobs.push(job);
        }
        // Under load, take what else is already waiting (without waiting for more): runs of
        // `max_batch_size` cut from more items, sorted by length, carry less padding. With
        // several instances, what waits is left to the others.
        let instances = state.model.get().map_or(1, |m| m.instances);
        let most = if instances > 1 { max_batch } else { max_batch * DRAIN_BATCHES };
        while n < most {
            match rx.try_recv() {
                Ok(job) => {
                    n += job.texts.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        drop(rx);
        // The items leave the queue: each job's reservation is released here, unless its
        // request already gave up and released it. Nobody waits for the work of a client
        // gone away or past its deadline: it is dropped.
        let now = tokio::time::Instant::now();
        let (jobs, abandoned): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(|j| {
            if !j.queued.swap(false, Ordering::SeqCst) {
                return false;
            }
            state.queued.fetch_sub(j.texts.len(), Ordering::SeqCst);
            !j.abandoned(now)
        });
        state.metrics.queue.set(state.queued.load(Ordering::SeqCst) as i64);
        let dropped: usize = abandoned.iter().map(|j| j.texts.len()).sum();
        if dropped > 0 {
            state.metrics.dropped.inc_by(dropped as u64);
            tracing::debug!(items = dropped, "dropped the work of requests nobody waits for");
        }
        let n = n - dropped;
        if n == 0 {
            continue;
        }
        state.metrics.batch.observe(n as f64);
        let Some(model) = state.model.get().cloned() else {
            for job in jobs {
                let _ = job.reply.send(Err("the model is not loaded".into()));
            }
            continue;
        };
        let texts: Vec<Vec<String>> = jobs.iter().flat_map(|j| j.texts.iter().cloned()).collect();
        // Each request is answered as soon as its items are scored (short ones run first).
        let mut owner = Vec::with_capacity(texts.len());
        let mut pending: Vec<(usize, usize, Option<Reply>)> = Vec::with_capacity(jobs.len());
        for (j, job) in jobs.into_iter().enumerate() {
            owner.extend(std::iter::repeat_n(j, job.texts.len()));
            pending.push((owner.len() - job.texts.len(), job.texts.len(), Some(job.reply)));
        }
        let mut left: Vec<usize> = pending.iter().map(|p| p.1).collect();
        let runs = state.metrics.runs.clone();
        let instance_runs = state.metrics.instance_runs.with_label_values(&[instance.to_string()]);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            fail::fail_point!("serve::run");
            // Jobs arrive in order: a job's index is its age rank.
            let age = owner.clone();
            let result = model.probabilities_with(instance, &texts, max_batch, Some(&age), |rows, probs| {
                runs.inc();
                instance_runs.inc();
                for &i in rows {
                    let j = owner[i];
                    left[j] -= 1;
                    if left[j] == 0 {
                        let (start, k, reply) = &mut pending[j];
                        let part = probs.iter().map(|head| head[*start..*start + *k].to_vec()).collect();
                        if let Some(reply) = reply.take() {
                            let _ = reply.send(Ok(part));
                            fail::fail_point!("serve::answered");
                        }
                    }
                }
            });
            (result.err().map(|e| e.to_string()), pending)
        }));
        // A failed run: every request not yet answered gets the error.
        match outcome {
            Ok((None, _)) => {}
            Ok((Some(e), pending)) => {
                for (_, _, reply) in pending {
                    if let Some(reply) = reply {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
            Err(e) => {
                let e = e.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| e.downcast_ref::<String>().cloned());
                tracing::error!(error = e.as_deref().unwrap_or("panic"), "model run failed");
            }
        }
    }
}

type Reply = oneshot::Sender<std::result::Result<Vec<Vec<Vec<f32>>>, String>>;
