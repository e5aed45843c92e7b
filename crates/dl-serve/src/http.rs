//! The HTTP side: the page, the JSON API, errors as JSON, one log line per request.

use std::future::Future;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::model::{digit_from_gray, SharedClassifier, MAX_BODY_BYTES};
use crate::ServeError;

/// The page: a canvas to draw on, the probabilities as bars, the 28x28 input.
pub const PAGE: &str = include_str!("page.html");

/// The body of `POST /api/predict` as JSON: an 8-bit grey image, row-major, either
/// polarity (light ink on dark, or dark ink on light paper).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PixelsRequest {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `width * height` grey levels, 0 to 255.
    pub pixels: Vec<u8>,
}

/// An error answer: a status and `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

impl From<ServeError> for ApiError {
    fn from(e: ServeError) -> Self {
        let status = match e {
            ServeError::Image(_) | ServeError::Data(_) | ServeError::Input(_) => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, e.to_string())
    }
}

/// Whether the server logs each request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestLog {
    /// One line per request on stderr: method, path, status, milliseconds.
    Stderr,
    /// Nothing (a load benchmark).
    Off,
}

/// The routes: `GET /` (the page), `GET /api/model`, `POST /api/predict`; every other
/// path is a JSON 404. Bodies above 2 MiB are refused with 413.
pub fn router(classifier: SharedClassifier, log: RequestLog) -> Router {
    let app = Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/api/model", get(model_info))
        .route("/api/predict", post(predict))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such page: try / or POST /api/predict") })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES));
    let app = match log {
        RequestLog::Stderr => app.layer(middleware::from_fn(log_request)),
        RequestLog::Off => app,
    };
    app.with_state(classifier)
}

async fn model_info(State(c): State<SharedClassifier>) -> Response {
    Json(json!({ "model": c.description(), "members": c.members() })).into_response()
}

/// The kinds of body `POST /api/predict` takes.
enum Body {
    Json,
    Image,
}

fn body_kind(headers: &HeaderMap) -> Result<Body, ApiError> {
    let unsupported = |what: &str| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("content type {what}: send application/json ({{\"width\", \"height\", \"pixels\"}}), image/png or image/jpeg"),
        )
    };
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(unsupported("missing"));
    };
    let value = value.to_str().map_err(|_| unsupported("unreadable"))?;
    let essence = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match essence.as_str() {
        "application/json" => Ok(Body::Json),
        "image/png" | "image/jpeg" | "application/octet-stream" => Ok(Body::Image),
        other => Err(unsupported(other)),
    }
}

async fn predict(
    State(classifier): State<SharedClassifier>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let kind = body_kind(&headers)?;
    let body = body.map_err(|e| {
        let status = e.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(status, format!("the body is larger than {} bytes", MAX_BODY_BYTES))
        } else {
            ApiError::new(status, e.body_text())
        }
    })?;
    let input = match kind {
        Body::Json => {
            let req: PixelsRequest = serde_json::from_slice(&body)
                .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("malformed JSON: {e}")))?;
            digit_from_gray(req.width, req.height, &req.pixels)?
        }
        Body::Image => {
            // decoding is CPU work: keep it off the async threads, with the inference
            run_blocking(move || crate::model::digit_from_image(&body)).await?
        }
    };
    let prediction = run_blocking(move || classifier.classify(input)).await?;
    Ok(Json(prediction).into_response())
}

async fn run_blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ServeError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(ApiError::from),
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the prediction failed: {e}"),
        )),
    }
}

/// One line per request on stderr: method, path, status, milliseconds.
async fn log_request(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let response = next.run(req).await;
    eprintln!(
        "{method} {path} {} {:.2} ms",
        response.status().as_u16(),
        start.elapsed().as_secs_f64() * 1e3
    );
    response
}

/// Serves `app` (a [`router`]) on `listener` until `shutdown` completes, then lets the
/// requests in flight finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}
