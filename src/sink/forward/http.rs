//! `http`: a Juju-style metrics collector. Batches are POSTed as a JSON
//! array, byte for byte what Go's `json.Marshal([]MetricBatch)` writes; the
//! collector's `Response` says which batch uuids it acknowledged (only those
//! leave the spool) and carries model and unit meter statuses and a new
//! grace period, which are relayed to SubmitBatch clients. Entries, when an
//! entries URL is configured, are POSTed as NDJSON; a 2xx acks them all.
//!
//! While the collector cannot be reached, the model status is computed the
//! way a Juju controller does: AMBER after 3 consecutive failed sends, RED
//! once the last successful send is older than the grace period, GREEN again
//! after a successful send.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::verdict::Failure;
use super::{HttpOptions, ProbeFuture, Upstream, UpstreamError, UpstreamFuture, Verdict};
use crate::metrics::{metrics, SinkLabels};
use crate::sink::{MeterStatus, Record, Relay};

/// Consecutive failed sends after which the status turns AMBER.
const AMBER_AFTER_FAILURES: u32 = 3;
/// Largest collector response read; a bigger one is malformed.
const MAX_RESPONSE_BYTES: usize = 16 << 20;

/// A Juju-style collector.
pub struct HttpUpstream {
    client: reqwest::Client,
    batches_url: reqwest::Url,
    entries_url: Option<reqwest::Url>,
    token: Option<String>,
    name: String,
    state: Arc<Mutex<Collector>>,
}

/// What the collector last said, and how sending to it has gone.
struct Collector {
    failures: u32,
    /// The last successful send (start-up counts as one: the grace period
    /// runs from there).
    last_success: Instant,
    grace: Duration,
    /// Whether the grace period came from the collector.
    grace_from_collector: bool,
    models: HashMap<String, ModelReport>,
    light: Light,
}

#[derive(Default)]
struct ModelReport {
    status: MeterStatus,
    units: BTreeMap<String, MeterStatus>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Light {
    Green,
    Amber,
    Red,
}

impl HttpUpstream {
    pub fn new(
        name: String,
        batches_url: &str,
        options: &HttpOptions,
        token: Option<&str>,
    ) -> Result<HttpUpstream, String> {
        let parse = check_url;
        let batches_url = parse("sink http", batches_url)?;
        let entries_url = options
            .entries_url
            .as_deref()
            .map(|u| parse("--http-entries-url", u))
            .transpose()?;
        let client = reqwest::Client::builder()
            .timeout(options.timeout)
            .connect_timeout(options.timeout)
            .user_agent(concat!("meterd/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("sink http: {e}"))?;
        Ok(HttpUpstream {
            client,
            batches_url,
            entries_url,
            token: token.map(str::to_owned),
            state: Arc::new(Mutex::new(Collector {
                failures: 0,
                last_success: Instant::now(),
                grace: options.grace_period,
                grace_from_collector: false,
                models: HashMap::new(),
                light: Light::Green,
            })),
            name,
        })
    }

    fn post(&self, url: reqwest::Url, content_type: &'static str, body: Vec<u8>) -> Post {
        let mut req = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        Post(req)
    }
}

/// Parses a collector URL; `what` names the flag in the error.
pub fn check_url(what: &str, url: &str) -> Result<reqwest::Url, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{what} {url:?}: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("{what} {url:?}: the scheme must be http or https"));
    }
    Ok(parsed)
}

/// One request, ready to send.
struct Post(reqwest::RequestBuilder);

impl Post {
    /// Sends it; anything but a 2xx with a body of at most
    /// [`MAX_RESPONSE_BYTES`] is an error.
    async fn send(self) -> Result<Vec<u8>, UpstreamError> {
        let mut resp = self
            .0
            .send()
            .await
            // Without the URL: it may hold a password, and the sink's name
            // (redacted) is on every log line already.
            .map_err(|e| {
                UpstreamError::transient(format!("POST failed: {}", error_chain(&e.without_url())))
            })?;
        let status = resp.status();
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| {
            UpstreamError::transient(format!(
                "reading the answer: {}",
                error_chain(&e.without_url())
            ))
        })? {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(UpstreamError::transient(format!(
                    "answer larger than {MAX_RESPONSE_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            let message = format!("collector answered {status}: {text}");
            return Err(UpstreamError {
                class: super::verdict::http_status(status.as_u16(), &message),
                message,
            });
        }
        Ok(body)
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

impl Upstream for HttpUpstream {
    fn deliver(&self, records: Arc<[Record]>) -> UpstreamFuture {
        let batches = records.first().is_some_and(|r| !r.is_entry());
        if !batches {
            let Some(url) = self.entries_url.clone() else {
                return Box::pin(async {
                    Err(UpstreamError::transient(
                        "no --http-entries-url for entries",
                    ))
                });
            };
            let body: Vec<u8> = records
                .iter()
                .flat_map(|r| r.line.iter().copied())
                .collect();
            let post = self.post(url, "application/x-ndjson", body);
            let n = records.len();
            return Box::pin(async move {
                post.send().await?;
                Ok(vec![Verdict::Acked; n])
            });
        }

        // The Go encoding of []MetricBatch: the lines, comma-separated, in brackets.
        let mut body = Vec::with_capacity(2 + records.iter().map(|r| r.line.len()).sum::<usize>());
        body.push(b'[');
        for (i, r) in records.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(r.line.strip_suffix(b"\n").unwrap_or(&r.line));
        }
        body.push(b']');
        let post = self.post(self.batches_url.clone(), "application/json", body);
        let state = self.state.clone();
        let name = self.name.clone();
        Box::pin(async move {
            let answer = match post.send().await {
                Ok(body) => serde_json::from_slice::<Response>(&body).map_err(|e| {
                    UpstreamError::transient(format!("malformed collector response: {e}"))
                }),
                Err(e) => Err(e),
            };
            let mut collector = state.lock().unwrap_or_else(PoisonError::into_inner);
            match answer {
                Ok(response) => {
                    let acked = collector.succeeded(response);
                    collector.update_light(&name);
                    Ok(records
                        .iter()
                        .map(|r| match &r.key {
                            Some(uuid) if acked.contains(&**uuid) => Verdict::Acked,
                            _ => Verdict::Retry,
                        })
                        .collect())
                }
                Err(e) => {
                    // Only a collector that cannot take the send counts
                    // towards AMBER; one that answered about the request
                    // (too large, a refused batch) was reached.
                    if matches!(e.class, Failure::Transient | Failure::Busy) {
                        collector.failures = collector.failures.saturating_add(1);
                        collector.update_light(&name);
                    }
                    Err(e)
                }
            }
        })
    }

    fn relay(&self, model_uuid: &str) -> Option<Relay> {
        let mut collector = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        collector.update_light(&self.name);
        let report = collector.models.get(model_uuid);
        let model_status = match collector.light {
            Light::Green => report.map(|r| r.status.clone()).unwrap_or_default(),
            Light::Amber => MeterStatus {
                status: "AMBER".into(),
                info: "failed to send metrics".into(),
            },
            Light::Red => MeterStatus {
                status: "RED".into(),
                info: "failed to send metrics, exceeded grace period".into(),
            },
        };
        Some(Relay {
            model_status,
            unit_statuses: report.map(|r| r.units.clone()).unwrap_or_default(),
            new_grace_period: collector.grace_from_collector.then_some(collector.grace),
        })
    }

    fn takes_entries(&self) -> bool {
        self.entries_url.is_some()
    }

    /// A `HEAD` on the batches URL: any answer below 500 (a collector that
    /// takes only POST answers 405) means the collector is there; a 5xx (a
    /// proxy in front of a collector that is down) or no answer means not.
    fn probe(&self) -> Option<ProbeFuture> {
        let mut req = self.client.head(self.batches_url.clone());
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        Some(Box::pin(async move {
            let resp = req
                .send()
                .await
                .map_err(|e| format!("HEAD failed: {}", error_chain(&e.without_url())))?;
            if resp.status().is_server_error() {
                return Err(format!("collector answered {}", resp.status()));
            }
            Ok(())
        }))
    }
}

// === impl Collector ===

impl Collector {
    /// Records a successful exchange; returns the acknowledged batch uuids.
    fn succeeded(&mut self, response: Response) -> HashSet<String> {
        self.failures = 0;
        self.last_success = Instant::now();
        if let Ok(ns) = u64::try_from(response.new_grace_period) {
            if ns > 0 {
                self.grace = Duration::from_nanos(ns);
                self.grace_from_collector = true;
            }
        }
        let mut acked = HashSet::new();
        for (model, env) in response.env_responses.unwrap_or_default() {
            acked.extend(env.acks.unwrap_or_default());
            let report = self.models.entry(model).or_default();
            if let Some(s) = env.model_status {
                report.status = s.into();
            }
            for (unit, s) in env.unit_statuses.unwrap_or_default() {
                report.units.insert(unit, s.into());
            }
        }
        acked
    }

    /// Recomputes the light; logs and exports it when it changes.
    fn update_light(&mut self, sink: &str) {
        let light = if self.failures < AMBER_AFTER_FAILURES {
            Light::Green
        } else if self.last_success.elapsed() > self.grace {
            Light::Red
        } else {
            Light::Amber
        };
        if light == self.light {
            return;
        }
        self.light = light;
        match light {
            Light::Green => tracing::info!(sink, "collector reachable again: status GREEN"),
            Light::Amber => tracing::warn!(
                sink,
                failures = self.failures,
                "sends to the collector keep failing: status AMBER"
            ),
            Light::Red => tracing::error!(
                sink,
                grace_period = %humantime::format_duration(self.grace),
                "no successful send within the grace period: status RED"
            ),
        }
        metrics()
            .collector_status
            .get_or_create(&SinkLabels { sink: sink.into() })
            .set(light as i64);
    }
}

/// The collector's answer, as the Go `Response` type encodes it.
#[derive(Deserialize)]
struct Response {
    #[serde(rename = "env-responses", default)]
    env_responses: Option<HashMap<String, EnvResponse>>,
    #[serde(rename = "new-grace-period", default)]
    new_grace_period: i64,
}

#[derive(Deserialize)]
struct EnvResponse {
    #[serde(default)]
    acks: Option<Vec<String>>,
    #[serde(rename = "model-status", default)]
    model_status: Option<StatusJson>,
    #[serde(rename = "unit-statuses", default)]
    unit_statuses: Option<HashMap<String, StatusJson>>,
}

#[derive(Deserialize)]
struct StatusJson {
    #[serde(default)]
    status: String,
    #[serde(default)]
    info: String,
}

impl From<StatusJson> for MeterStatus {
    fn from(s: StatusJson) -> Self {
        MeterStatus {
            status: s.status,
            info: s.info,
        }
    }
}
