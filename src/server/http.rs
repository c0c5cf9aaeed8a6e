//! The HTTP surface: routes, the API key, body limits and deadlines, and turning requests into
//! engine jobs and engine events into OpenAI responses or server-sent events. Nothing here touches MLX:
//! tokenizing and template rendering are pure Rust, and generation goes to the engine thread.

use super::api::{
    self, ApiError, Endpoint, GenerationRequest, Prompt, RequestGrammar, ResponseHead, Usage,
};
use super::logprobs::TokenLogprobs;
use super::metrics::{self, Metrics};
use super::scheduler::{Event, Job, ModelInfo};
use super::tools::{self, CallFilter, Tools};
use crate::constraint::Constraint;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream, StreamExt};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tower_http::timeout::TimeoutLayer;

/// What every handler shares.
pub struct AppState {
    /// The name `/v1/models` lists and responses carry.
    pub model_name: String,
    /// Other names a request's `model` may use (the spec given on the command line).
    pub aliases: Vec<String>,
    /// Set by the engine thread once the model is loaded.
    pub info: Arc<OnceLock<ModelInfo>>,
    /// The bounded queue to the engine thread.
    pub jobs: SyncSender<Job>,
    /// The queue's capacity (for the "queue full" message).
    pub max_queue: usize,
    /// Required `Authorization: Bearer` key, if set.
    pub api_key: Option<String>,
    /// The metrics `/metrics` exports (shared with the engine thread).
    pub metrics: Arc<Metrics>,
}

/// Limits on requests.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest request body in bytes (413 beyond).
    pub body_bytes: usize,
    /// Longest time to receive a whole request body (408 beyond).
    pub body_timeout: Duration,
    /// Longest time to produce a response's head (a non-streamed reply in full).
    pub request_timeout: Duration,
}

/// The application: every route, the API key check and the limits.
pub fn router(state: Arc<AppState>, limits: Limits) -> Router {
    let api = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route("/metrics", get(metrics_text))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key));
    Router::new()
        .route("/health", get(health))
        .merge(api)
        .fallback(unknown_route)
        .layer(middleware::map_response(openai_error_shape))
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn_with_state(limits, read_body))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.request_timeout,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), count_request))
        .with_state(state)
}

/// Counts every answered request by route and status (the outermost layer, so limits and
/// timeouts are counted with the status they produced).
async fn count_request(State(s): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let endpoint = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched".to_string(), |p| p.as_str().to_string());
    let response = next.run(request).await;
    s.metrics
        .count_request(&endpoint, response.status().as_u16());
    response
}

/// The metrics in OpenMetrics text.
async fn metrics_text(State(s): State<Arc<AppState>>) -> Response {
    let headers = [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)];
    (StatusCode::OK, headers, s.metrics.encode()).into_response()
}

/// 503 while the model loads, 200 after.
async fn health(State(s): State<Arc<AppState>>) -> Response {
    match s.info.get() {
        Some(_) => (StatusCode::OK, Json(json!({"status": "ok"}))).into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "loading model"})),
        )
            .into_response(),
    }
}

/// The one model served.
async fn models(State(s): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{"id": s.model_name, "object": "model", "created": unix_now(),
                  "owned_by": "mlx-engine"}],
    }))
}

async fn chat(
    State(s): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request = api::chat_request(&api::parse_object(&body_of(body)?)?)?;
    generate(&s, request, Endpoint::Chat).await
}

async fn completions(
    State(s): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request = api::completion_request(&api::parse_object(&body_of(body)?)?)?;
    generate(&s, request, Endpoint::Completions).await
}

/// `{"content": text, "add_special": bool}` → `{"tokens": [ids]}`.
async fn tokenize(
    State(s): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let obj = api::parse_object(&body_of(body)?)?;
    let info = s.ready()?;
    let content = match obj.get("content") {
        Some(Value::String(c)) => c,
        _ => return Err(ApiError::invalid("content", "must be a string")),
    };
    let add_special = match obj.get("add_special") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::invalid("add_special", "must be a boolean")),
    };
    let tokens = info
        .tokenizer
        .encode(content, add_special)
        .map_err(|e| ApiError::invalid("content", e.to_string()))?;
    Ok(Json(json!({ "tokens": tokens })))
}

/// `{"tokens": [ids]}` → `{"content": text}`.
async fn detokenize(
    State(s): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let obj = api::parse_object(&body_of(body)?)?;
    let info = s.ready()?;
    let tokens = token_ids(&obj, "tokens", info.tokenizer.vocab_size())?;
    let content = info
        .tokenizer
        .decode(&tokens, false)
        .map_err(|e| ApiError::invalid("tokens", e.to_string()))?;
    Ok(Json(json!({ "content": content })))
}

/// An array of ids below `vocab`.
fn token_ids(
    obj: &serde_json::Map<String, Value>,
    name: &str,
    vocab: usize,
) -> Result<Vec<u32>, ApiError> {
    let Some(Value::Array(items)) = obj.get(name) else {
        return Err(ApiError::invalid(name, "must be an array of token ids"));
    };
    items
        .iter()
        .map(|v| {
            v.as_u64()
                .filter(|&t| t < vocab as u64)
                .map(|t| t as u32)
                .ok_or_else(|| {
                    ApiError::invalid(name, format!("token ids must be integers in [0, {vocab})"))
                })
        })
        .collect()
}

/// 404 for every path we do not serve.
async fn unknown_route(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "unknown route: {} {}",
            request.method(),
            request.uri().path()
        ),
    )
}

/// 401 unless the request carries the configured key as `Authorization: Bearer KEY`.
async fn require_key(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    let Some(key) = &s.api_key else {
        return next.run(request).await;
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(g) if g == key => next.run(request).await,
        Some(_) => ApiError::new(StatusCode::UNAUTHORIZED, "invalid API key").into_response(),
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing API key: send 'Authorization: Bearer KEY'",
        )
        .into_response(),
    }
}

/// Rewrites error responses that are not JSON (from the body limit, the timeout, a method not
/// allowed) into OpenAI's error shape, so clients always get one.
async fn openai_error_shape(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let message = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "request body too large".to_string(),
        StatusCode::REQUEST_TIMEOUT => "request timed out".to_string(),
        StatusCode::METHOD_NOT_ALLOWED => "method not allowed on this route".to_string(),
        other => other.canonical_reason().unwrap_or("error").to_lowercase(),
    };
    ApiError::new(status, message).into_response()
}

/// Reads the whole request body before routing: 413 when its announced or received length
/// passes `limits.body_bytes`, 408 when it has not arrived within `limits.body_timeout`
/// (however slowly it trickles in), 400 when the connection fails mid-body.
async fn read_body(State(limits): State<Limits>, request: Request, next: Next) -> Response {
    let too_large = || {
        let message = format!(
            "request body too large: the limit is {} bytes",
            limits.body_bytes
        );
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, message).into_response()
    };
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > limits.body_bytes as u64) {
        return too_large();
    }
    let (parts, body) = request.into_parts();
    let mut chunks = body.into_data_stream();
    let mut bytes = Vec::new();
    let receive = async {
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            if bytes.len() + chunk.len() > limits.body_bytes {
                return Ok(false);
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok::<bool, axum::Error>(true)
    };
    match tokio::time::timeout(limits.body_timeout, receive).await {
        Ok(Ok(true)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Ok(false)) => too_large(),
        Ok(Err(e)) => {
            let message = format!("could not read the request body: {e}");
            ApiError::new(StatusCode::BAD_REQUEST, message).into_response()
        }
        Err(_) => {
            let message = format!(
                "request body not received within {} s",
                limits.body_timeout.as_secs_f64()
            );
            ApiError::new(StatusCode::REQUEST_TIMEOUT, message).into_response()
        }
    }
}

/// The request body, or its rejection (too large, unreadable) as an API error.
fn body_of(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|r| ApiError::new(r.status(), r.body_text()))
}

impl AppState {
    /// The loaded model, or 503 while it loads.
    fn ready(&self) -> Result<&ModelInfo, ApiError> {
        self.info.get().ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the model is still loading",
            )
        })
    }

    /// 404 unless `model` (when given) names the served model.
    fn check_model(&self, model: Option<&str>) -> Result<(), ApiError> {
        match model {
            Some(m) if m != self.model_name && !self.aliases.iter().any(|a| a == m) => {
                Err(ApiError {
                    status: StatusCode::NOT_FOUND,
                    message: format!(
                        "model '{m}' not found; this server serves '{}'",
                        self.model_name
                    ),
                    param: Some("model".into()),
                })
            }
            _ => Ok(()),
        }
    }
}

/// Tokenizes a request, queues it for the engine, and answers in full or as a stream.
async fn generate(
    s: &AppState,
    request: GenerationRequest,
    endpoint: Endpoint,
) -> Result<Response, ApiError> {
    s.check_model(request.model.as_deref())?;
    let info = s.ready()?;
    let definitions = request
        .tools
        .as_ref()
        .map_or(&[][..], |t| &t.definitions[..]);
    let prompt = prompt_tokens(info, &request.prompt, definitions)?;
    check_logit_bias(info, &request)?;
    let constraint = compile_grammar(info, request.grammar.as_ref())?;
    let (events, receiver) = unbounded_channel();
    let job = Job {
        prompt,
        sampling: request.sampling,
        constraint,
        max_tokens: request.max_tokens.unwrap_or(info.n_ctx),
        stop: request.stop,
        events,
        received: Instant::now(),
        speculative: request.speculative,
    };
    // Counted before sending: the engine thread may take the job at once.
    s.metrics.queue_depth.inc();
    let sent = s.jobs.try_send(job);
    if sent.is_err() {
        s.metrics.queue_depth.dec();
    }
    match sent {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the server is busy: {} requests already wait; retry later",
                    s.max_queue
                ),
            ))
        }
        Err(TrySendError::Disconnected(_)) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the engine has stopped",
            ))
        }
    }
    let head = ResponseHead {
        id: response_id(endpoint),
        created: unix_now(),
        model: s.model_name.clone(),
        endpoint,
        logprobs: request.logprobs.is_some(),
        token_names: request.token_names,
        tool_calls: request.tools.as_ref().is_some_and(Tools::parses_calls),
    };
    match request.stream {
        true => Ok(stream_response(head, receiver, request.include_usage).into_response()),
        false => collect(head, receiver).await,
    }
}

/// The prompt's token ids, checked against the vocabulary and the context.
fn prompt_tokens(info: &ModelInfo, prompt: &Prompt, tools: &[Value]) -> Result<Vec<u32>, ApiError> {
    let tokenizer = &info.tokenizer;
    let (tokens, param) = match prompt {
        Prompt::Messages(messages) => {
            let template = info.template.as_ref().ok_or_else(|| {
                ApiError::invalid(
                    "messages",
                    "the model has no chat template; use /v1/completions",
                )
            })?;
            let text = template
                .render_with_tools(messages, tools, true)
                .map_err(|e| ApiError::invalid("messages", e.to_string()))?;
            // The rendered template already holds its special tokens.
            let ids = tokenizer.encode(&text, false);
            (
                ids.map_err(|e| ApiError::invalid("messages", e.to_string()))?,
                "messages",
            )
        }
        Prompt::Text(text) => {
            let ids = tokenizer.encode(text, true);
            (
                ids.map_err(|e| ApiError::invalid("prompt", e.to_string()))?,
                "prompt",
            )
        }
        Prompt::Tokens(ids) => {
            let vocab = tokenizer.vocab_size();
            if let Some(bad) = ids.iter().find(|&&t| t as usize >= vocab) {
                return Err(ApiError::invalid(
                    "prompt",
                    format!("token id {bad} is outside the vocabulary (size {vocab})"),
                ));
            }
            (ids.clone(), "prompt")
        }
    };
    if tokens.is_empty() {
        return Err(ApiError::invalid(param, "the prompt has no tokens"));
    }
    if tokens.len() >= info.n_ctx {
        return Err(ApiError::invalid(
            param,
            format!(
                "the prompt is too long: n_prompt_tokens = {} but the context holds n_ctx = {} \
                 positions (one more is needed to generate)",
                tokens.len(),
                info.n_ctx
            ),
        ));
    }
    Ok(tokens)
}

/// The request's grammar compiled for this model; 400 naming its field when llguidance refuses
/// it.
fn compile_grammar(
    info: &ModelInfo,
    grammar: Option<&RequestGrammar>,
) -> Result<Option<Constraint>, ApiError> {
    let Some(request) = grammar else {
        return Ok(None);
    };
    let compiler = info.grammars.as_ref().map_err(|reason| {
        ApiError::invalid(
            &request.param,
            format!("structured output is unavailable for this model: {reason}"),
        )
    })?;
    compiler
        .compile(&request.grammar)
        .map(Some)
        .map_err(|e| ApiError::invalid(&request.param, e.to_string()))
}

/// 400 when a `logit_bias` id is outside the vocabulary.
fn check_logit_bias(info: &ModelInfo, request: &GenerationRequest) -> Result<(), ApiError> {
    let vocab = info.tokenizer.vocab_size();
    match request
        .sampling
        .logit_bias
        .iter()
        .find(|(id, _)| *id as usize >= vocab)
    {
        Some((id, _)) => Err(ApiError::invalid(
            "logit_bias",
            format!("token id {id} is outside the vocabulary (size {vocab})"),
        )),
        None => Ok(()),
    }
}

/// Waits for the whole generation and answers with one JSON body.
async fn collect(
    head: ResponseHead,
    mut receiver: UnboundedReceiver<Event>,
) -> Result<Response, ApiError> {
    let mut text = String::new();
    let mut entries: Vec<TokenLogprobs> = vec![];
    while let Some(event) = receiver.recv().await {
        match event {
            Event::Text {
                text: piece,
                logprobs,
            } => {
                text.push_str(&piece);
                entries.extend(logprobs);
            }
            Event::Done {
                finish,
                prompt_tokens,
                completion_tokens,
                cached_tokens,
            } => {
                let usage = Usage {
                    prompt_tokens,
                    completion_tokens,
                    cached_tokens,
                };
                let calls = match head.tool_calls {
                    true => tools::split_calls(&text),
                    false => None,
                };
                let body = match calls {
                    Some((content, calls)) => {
                        head.tool_call_response(&content, &calls, &entries, usage)
                    }
                    None => head.response(&text, &entries, finish.as_str(), usage),
                };
                return Ok(Json(body).into_response());
            }
            Event::Failed(message) => return Err(engine_error(message)),
            Event::Unavailable(message) => return Err(unavailable(message)),
        }
    }
    Err(engine_error("the engine dropped the request".into()))
}

/// A failure inside the engine: a 500 (the request itself was valid).
fn engine_error(message: String) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
}

/// A request the engine did not start (it is shutting down): a 503.
fn unavailable(message: String) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
}

/// Server-sent events: a role chunk (chat), content chunks, a finish chunk, a usage chunk when
/// asked, then `[DONE]`. Dropping the stream (client gone) drops the receiver, which cancels
/// the job at the engine's next step.
fn stream_response(
    head: ResponseHead,
    receiver: UnboundedReceiver<Event>,
    include_usage: bool,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let first = match head.endpoint {
        Endpoint::Chat => vec![data(&head.chunk(None, &[], true, None))],
        Endpoint::Completions => vec![],
    };
    let filter = head.tool_calls.then(CallFilter::default);
    let state = Some((head, receiver, filter));
    let rest = stream::unfold(state, move |state| async move {
        let (head, mut receiver, mut filter) = state?;
        let events = match receiver.recv().await {
            Some(Event::Text { text, logprobs }) => {
                let text = match &mut filter {
                    Some(f) => f.push(&text),
                    None => text,
                };
                match text.is_empty() && logprobs.is_empty() {
                    true => vec![],
                    false => vec![data(&head.chunk(Some(&text), &logprobs, false, None))],
                }
            }
            Some(Event::Done {
                finish,
                prompt_tokens,
                completion_tokens,
                cached_tokens,
            }) => {
                let (rest, calls) = filter.map(CallFilter::finish).unwrap_or_default();
                let mut out = vec![];
                if !rest.is_empty() {
                    out.push(data(&head.chunk(Some(&rest), &[], false, None)));
                }
                for (i, call) in calls.iter().enumerate() {
                    out.push(data(&head.tool_call_chunk(call, i)));
                }
                let finish = match calls.is_empty() {
                    true => finish.as_str(),
                    false => "tool_calls",
                };
                out.push(data(&head.chunk(None, &[], false, Some(finish))));
                if include_usage {
                    let usage = Usage {
                        prompt_tokens,
                        completion_tokens,
                        cached_tokens,
                    };
                    out.push(data(&head.usage_chunk(usage)));
                }
                out.push(Ok(SseEvent::default().data("[DONE]")));
                return Some((out, None));
            }
            Some(Event::Failed(message)) => {
                return Some((vec![data(&engine_error(message).body())], None))
            }
            Some(Event::Unavailable(message)) => {
                return Some((vec![data(&unavailable(message).body())], None))
            }
            None => return None,
        };
        Some((events, Some((head, receiver, filter))))
    });
    let events = stream::iter(first)
        .chain(rest.flat_map(stream::iter))
        .boxed();
    Sse::new(events).keep_alive(KeepAlive::default())
}

/// One `data:` event holding `value`.
fn data(value: &Value) -> Result<SseEvent, Infallible> {
    Ok(SseEvent::default().data(value.to_string()))
}

/// Seconds since the Unix epoch.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A response id unique within this process: `chatcmpl-…` or `cmpl-…`.
fn response_id(endpoint: Endpoint) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let prefix = match endpoint {
        Endpoint::Chat => "chatcmpl",
        Endpoint::Completions => "cmpl",
    };
    format!("{prefix}-{:x}{n:06x}", unix_now())
}
