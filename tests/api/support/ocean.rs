//! A stand-in Ocean on loopback: its token endpoint, `$process-messages` with scripted answers,
//! and the site-number read `check-site` uses. It records everything it is sent.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

pub const CLIENT_ID: &str = "relay-client";
pub const CLIENT_SECRET: &str = "relay-secret";

/// What `$process-messages` answers next.
#[derive(Debug, Clone)]
pub enum Answer {
    Status(u16),
    RetryAfter(u16, u64),
    Outcome(u16, &'static str),
    /// Answers 401 and forgets every token issued so far (as if they expired).
    ExpireTokens,
    /// Waits this long before answering 200.
    Slow(Duration),
    /// Answers this status with a body that never ends (counted in [`MockOcean::streamed`]).
    Endless(u16),
}

#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    pub authorization: String,
    pub content_type: String,
    pub body: Value,
    pub answered: u16,
}

/// What a document address answers next (then, with nothing scripted, 404).
#[derive(Debug, Clone)]
pub enum Serve {
    /// 200 with these bytes as `application/pdf`.
    Pdf(Vec<u8>),
    /// 200 with these bytes, sent in pieces this far apart.
    SlowPdf(Vec<u8>, Duration),
    Status(u16),
    /// This status with `Retry-After` as given.
    RetryAfter(u16, &'static str),
    /// Answers 401 and forgets every token issued so far (as if they expired).
    ExpireTokens,
}

/// One document request: its path and query, and its Authorization header.
#[derive(Debug, Clone)]
pub struct DocumentRequest {
    pub path_and_query: String,
    pub authorization: String,
}

/// One token request: its form fields and its Authorization header, if any.
pub type TokenRequest = (HashMap<String, String>, Option<String>);

#[derive(Default)]
struct Inner {
    script: Mutex<VecDeque<Answer>>,
    tokens: Mutex<HashSet<String>>,
    token_requests: Mutex<Vec<TokenRequest>>,
    issued: AtomicU64,
    received: Mutex<Vec<Received>>,
    /// Referral ref → the id of its Task, once Ocean has one (see [`MockOcean::has_task`]).
    tasks: Mutex<HashMap<String, String>>,
    /// Path → what it answers next.
    documents: Mutex<HashMap<String, VecDeque<Serve>>>,
    document_requests: Mutex<Vec<DocumentRequest>>,
    /// What the token answer says as `expires_in` (unset: 3600).
    expires_in: Mutex<Option<Value>>,
    /// Bytes of endless bodies the relay has taken so far.
    streamed: Arc<AtomicU64>,
}

#[derive(Clone)]
pub struct MockOcean {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
}

impl MockOcean {
    pub async fn start() -> Self {
        let inner = Arc::new(Inner::default());
        let router = Router::new()
            .route("/svc/oauth2/token", post(token))
            .route("/svc/fhir/v1/$process-messages", post(message))
            .route("/svc/fhir/v1/NamingSystem/id-site-number", get(site_number))
            .route(
                "/svc/fhir/v1/ServiceRequest/{referral}/$letter",
                get(document),
            )
            .route("/svc/fhir/v1/DocumentReference/{id}/$binary", get(document))
            .with_state(Arc::clone(&inner));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        Self { addr, inner }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Queues answers for the next messages (then 200 again).
    pub fn script(&self, answers: impl IntoIterator<Item = Answer>) {
        self.inner.script.lock().unwrap().extend(answers);
    }

    pub fn received(&self) -> Vec<Received> {
        self.inner.received.lock().unwrap().clone()
    }

    pub fn delivered(&self) -> Vec<Value> {
        self.received()
            .into_iter()
            .filter(|r| (200..300).contains(&r.answered))
            .map(|r| r.body)
            .collect()
    }

    /// Ocean already has Task `task_id` for `referral` (as when its own messages carried it).
    /// Task messages are then held to Ocean's rule: `notify-add-process-request` for a referral
    /// that has a Task, or any Task message naming another id, is refused with 422.
    pub fn has_task(&self, referral: &str, task_id: &str) {
        self.inner
            .tasks
            .lock()
            .unwrap()
            .insert(referral.to_owned(), task_id.to_owned());
    }

    /// Queues what `path` (e.g. `/svc/fhir/v1/ServiceRequest/R-1/$letter`) answers next.
    pub fn serve(&self, path: &str, answers: impl IntoIterator<Item = Serve>) {
        self.inner
            .documents
            .lock()
            .unwrap()
            .entry(path.to_owned())
            .or_default()
            .extend(answers);
    }

    /// Document requests received, in order.
    pub fn document_requests(&self) -> Vec<DocumentRequest> {
        self.inner.document_requests.lock().unwrap().clone()
    }

    /// The token endpoint answers `expires_in` with this value from now on.
    pub fn token_expires_in(&self, value: Value) {
        *self.inner.expires_in.lock().unwrap() = Some(value);
    }

    /// Bytes of [`Answer::Endless`] bodies the relay has read (and the socket buffered).
    pub fn streamed(&self) -> u64 {
        self.inner.streamed.load(Ordering::SeqCst)
    }

    /// Token requests: the form fields and the Authorization header, if any.
    pub fn token_requests(&self) -> Vec<TokenRequest> {
        self.inner.token_requests.lock().unwrap().clone()
    }
}

async fn token(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    let form: HashMap<String, String> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let basic = headers
        .get("authorization")
        .map(|v| v.to_str().unwrap_or("").to_owned());
    inner
        .token_requests
        .lock()
        .unwrap()
        .push((form.clone(), basic.clone()));
    let expected_basic = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("{CLIENT_ID}:{CLIENT_SECRET}")
        )
    );
    let form_ok = form.get("client_id").map(String::as_str) == Some(CLIENT_ID)
        && form.get("client_secret").map(String::as_str) == Some(CLIENT_SECRET);
    let ok = form.get("grant_type").map(String::as_str) == Some("client_credentials")
        && (form_ok || basic.as_deref() == Some(expected_basic.as_str()));
    if !ok {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": "invalid_client"})),
        )
            .into_response();
    }
    let n = inner.issued.fetch_add(1, Ordering::SeqCst) + 1;
    let token = format!("ocean-token-{n}");
    inner.tokens.lock().unwrap().insert(token.clone());
    let expires_in = inner
        .expires_in
        .lock()
        .unwrap()
        .clone()
        .unwrap_or(json!(3600));
    axum::Json(json!({"access_token": token, "token_type": "Bearer", "expires_in": expires_in}))
        .into_response()
}

async fn message(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .map(|v| v.to_str().unwrap_or("").to_owned())
            .unwrap_or_default()
    };
    let authorization = header("authorization");
    let known = authorization
        .strip_prefix("Bearer ")
        .is_some_and(|t| inner.tokens.lock().unwrap().contains(t));
    let next = if known {
        inner.script.lock().unwrap().pop_front()
    } else {
        Some(Answer::Status(401))
    };
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    // Ocean's own rules apply to a message it would otherwise take.
    let next = match next {
        None => message_refusal(&parsed)
            .or_else(|| task_refusal(&inner, &parsed))
            .map(|refusal| Answer::Outcome(422, refusal)),
        scripted => scripted,
    };
    let mut status = 200;
    let mut response = StatusCode::OK.into_response();
    match next {
        None => {}
        Some(Answer::Status(code)) => {
            status = code;
            response = StatusCode::from_u16(code).unwrap().into_response();
        }
        Some(Answer::RetryAfter(code, secs)) => {
            status = code;
            response = (
                StatusCode::from_u16(code).unwrap(),
                [("retry-after", secs.to_string())],
            )
                .into_response();
        }
        Some(Answer::Outcome(code, text)) => {
            status = code;
            let outcome = json!({"resourceType": "OperationOutcome",
                                 "issue": [{"severity": "error", "code": "invalid", "diagnostics": text}]});
            response = (StatusCode::from_u16(code).unwrap(), axum::Json(outcome)).into_response();
        }
        Some(Answer::ExpireTokens) => {
            inner.tokens.lock().unwrap().clear();
            status = 401;
            response = StatusCode::UNAUTHORIZED.into_response();
        }
        Some(Answer::Slow(delay)) => {
            tokio::time::sleep(delay).await;
            // The caller gave up long ago: nobody learns of this 200.
            status = 599;
        }
        Some(Answer::Endless(code)) => {
            status = code;
            let streamed = Arc::clone(&inner.streamed);
            let chunks = futures_util::stream::repeat_with(move || {
                streamed.fetch_add(64 * 1024, Ordering::SeqCst);
                Ok::<_, std::io::Error>(vec![b' '; 64 * 1024])
            });
            response = (
                StatusCode::from_u16(code).unwrap(),
                [("content-type", "application/fhir+json")],
                axum::body::Body::from_stream(chunks),
            )
                .into_response();
        }
    }
    inner.received.lock().unwrap().push(Received {
        at: Instant::now(),
        authorization,
        content_type: header("content-type"),
        body: parsed,
        answered: status,
    });
    response
}

/// The event codes Ocean takes from a receiver.
const EVENTS: [&str; 6] = [
    "notify-add-process-request",
    "notify-update-process-request",
    "notify-add-appointment",
    "notify-update-appointment",
    "send-communication-from-provider",
    "notify-data-correction",
];

/// Why Ocean refuses a message whatever the referral's Task, if it does: an event it does not
/// take; a forward's new ServiceRequest without a SNOMED CT category, not replacing the
/// referral's, or not performed by a listing; a proposed Appointment without instructions for
/// the patient, or a booked one without a start; a correction that is not the referral's
/// ServiceRequest; a redirect that is not an absolute http(s) URL.
fn message_refusal(bundle: &Value) -> Option<&'static str> {
    let entries = bundle["entry"].as_array()?;
    let resources: Vec<&Value> = entries.iter().map(|e| &e["resource"]).collect();
    let by_url = |url: &str| {
        entries
            .iter()
            .find(|e| e["fullUrl"] == url)
            .map(|e| &e["resource"])
    };
    let header = resources
        .iter()
        .find(|r| r["resourceType"] == "MessageHeader")?;
    let referral = header["extension"][0]["valueString"].as_str()?;
    let event = header["eventCoding"]["code"].as_str()?;
    if !EVENTS.contains(&event) {
        return Some("this event is not taken from a receiver");
    }
    let focus = header["focus"][0]["reference"].as_str().and_then(by_url)?;
    match (event, focus["resourceType"].as_str()?) {
        ("notify-data-correction", "ServiceRequest") if focus["id"] != referral => {
            return Some("a correction must carry the referral's own ServiceRequest");
        }
        ("notify-data-correction", "ServiceRequest") => {}
        ("notify-data-correction", _) => return Some("a correction carries a ServiceRequest"),
        (_, "Task") => {
            let based_on = focus["basedOn"][0]["reference"].as_str()?;
            if based_on != format!("ServiceRequest/{referral}") {
                // A forward: a new ServiceRequest replacing the referral's, for a listing.
                let request = by_url(based_on)?;
                if request["replaces"][0]["reference"] != format!("ServiceRequest/{referral}") {
                    return Some("a forwarded ServiceRequest must replace the referral's");
                }
                let snomed = request["category"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|c| c["coding"].as_array().into_iter().flatten())
                    .any(|c| c["system"] == "http://snomed.info/sct" && c["code"].is_string());
                if !snomed {
                    return Some("a forwarded ServiceRequest needs a SNOMED CT category");
                }
                let listing = request["performer"][0]["reference"]
                    .as_str()
                    .and_then(by_url)?;
                let names_listing = listing["identifier"].as_array().is_some_and(|ids| {
                    ids.iter().any(|i| {
                        i["system"]
                            .as_str()
                            .is_some_and(|s| s.ends_with("/id-referral-target-reference"))
                            && i["value"].is_string()
                    })
                });
                if !names_listing || focus["status"] != "requested" {
                    return Some("a forward is a requested Task for a listing");
                }
            }
            for extension in focus["extension"].as_array().into_iter().flatten() {
                if extension["url"]
                    == "https://ocean.cognisantmd.com/ext-ocean-third-party-redirect-url"
                {
                    let url = extension["valueUri"].as_str().unwrap_or_default();
                    let absolute = reqwest::Url::parse(url)
                        .is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
                    if !absolute || url.contains(|c: char| c.is_whitespace() || c.is_control()) {
                        return Some("the redirect must be an absolute http(s) URL");
                    }
                }
            }
        }
        (_, "Appointment") => match focus["status"].as_str()? {
            "proposed" if !focus["patientInstruction"].is_string() => {
                return Some("a proposed appointment needs instructions for the patient");
            }
            "booked" if !focus["start"].is_string() => {
                return Some("a booked appointment needs its start");
            }
            _ => {}
        },
        _ => {}
    }
    None
}

/// Why Ocean refuses a Task message, if it does: a Task it does not know for a referral that has
/// one, or a second Task. A first Task (`notify-add-process-request`) becomes the referral's.
fn task_refusal(inner: &Inner, bundle: &Value) -> Option<&'static str> {
    let resources: Vec<&Value> = bundle["entry"]
        .as_array()?
        .iter()
        .map(|e| &e["resource"])
        .collect();
    let header = resources
        .iter()
        .find(|r| r["resourceType"] == "MessageHeader")?;
    let task = resources.iter().find(|r| r["resourceType"] == "Task")?;
    let referral = header["extension"][0]["valueString"].as_str()?.to_owned();
    let id = task["id"].as_str()?.to_owned();
    let event = header["eventCoding"]["code"].as_str()?;
    let mut tasks = inner.tasks.lock().unwrap();
    match (tasks.get(&referral), event) {
        (Some(_), "notify-add-process-request") => Some("the referral already has a Task"),
        (Some(known), _) if *known != id => Some("unknown Task id for this referral"),
        (None, "notify-add-process-request") => {
            tasks.insert(referral, id);
            None
        }
        (None, _) => Some("unknown Task id: no Task was added for this referral"),
        (Some(_), _) => None,
    }
}

async fn document(
    State(inner): State<Arc<Inner>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    let authorization = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    inner
        .document_requests
        .lock()
        .unwrap()
        .push(DocumentRequest {
            path_and_query: uri
                .path_and_query()
                .map(ToString::to_string)
                .unwrap_or_default(),
            authorization: authorization.clone(),
        });
    let known = authorization
        .strip_prefix("Bearer ")
        .is_some_and(|t| inner.tokens.lock().unwrap().contains(t));
    if !known {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let next = inner
        .documents
        .lock()
        .unwrap()
        .get_mut(uri.path())
        .and_then(VecDeque::pop_front);
    let pdf =
        |body: axum::body::Body| ([("content-type", "application/pdf")], body).into_response();
    match next {
        None => StatusCode::NOT_FOUND.into_response(),
        Some(Serve::Status(code)) => StatusCode::from_u16(code).unwrap().into_response(),
        Some(Serve::RetryAfter(code, after)) => (
            StatusCode::from_u16(code).unwrap(),
            [("retry-after", after)],
        )
            .into_response(),
        Some(Serve::ExpireTokens) => {
            inner.tokens.lock().unwrap().clear();
            StatusCode::UNAUTHORIZED.into_response()
        }
        Some(Serve::Pdf(bytes)) => pdf(axum::body::Body::from(bytes)),
        Some(Serve::SlowPdf(bytes, gap)) => {
            let pieces: Vec<Vec<u8>> = bytes
                .chunks(bytes.len().div_ceil(4).max(1))
                .map(<[u8]>::to_vec)
                .collect();
            let stream = futures_util::StreamExt::then(
                futures_util::stream::iter(pieces),
                move |piece| async move {
                    tokio::time::sleep(gap).await;
                    Ok::<_, std::io::Error>(piece)
                },
            );
            pdf(axum::body::Body::from_stream(stream))
        }
    }
}

async fn site_number(State(inner): State<Arc<Inner>>, headers: HeaderMap) -> Response {
    let known = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| inner.tokens.lock().unwrap().contains(t));
    if known {
        axum::Json(json!({"resourceType": "NamingSystem", "name": "id-site-number"}))
            .into_response()
    } else {
        StatusCode::UNAUTHORIZED.into_response()
    }
}
