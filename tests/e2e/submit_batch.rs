//! `SubmitBatch` end to end: vectors into the ledger, pipelining with good
//! and bad batches mixed, limits.

use std::time::Duration;

use meterd::pb::{self, SubmitBatchRequest, SubmitBatchResponse};
use meterd::server;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt as _;

use crate::common::{batch, batches, field_values, pb_batch_from_go, vector_lines, Client, Server};

/// Sends every request without waiting, then collects all responses.
pub async fn submit_all(
    client: &mut Client,
    requests: Vec<SubmitBatchRequest>,
) -> Vec<SubmitBatchResponse> {
    let n = requests.len();
    let stream = tokio_stream::iter(requests);
    let mut responses = client
        .submit_batch(stream)
        .await
        .expect("stream opened")
        .into_inner();
    let mut out = Vec::with_capacity(n);
    while let Some(r) = responses.next().await {
        out.push(r.expect("response"));
    }
    out
}

pub fn acks(resp: &SubmitBatchResponse, model: &str) -> Vec<String> {
    resp.env_responses
        .get(model)
        .map(|e| e.acks.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn every_batch_vector_lands_in_the_ledger_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::jsonl(dir.path()).await;
    let mut client = server.client().await;
    let mut want = Vec::new();
    let mut requests = Vec::new();
    for (_, line) in vector_lines("metric_batches") {
        if line.starts_with('{') {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            requests.push(SubmitBatchRequest::new(vec![pb_batch_from_go(&v)]));
            want.push(line);
        }
    }
    let responses = submit_all(&mut client, requests).await;
    assert_eq!(responses.len(), want.len());
    for (resp, line) in responses.iter().zip(&want) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(resp.rejected.is_empty(), "{:?}", resp.rejected);
        assert_eq!(
            acks(resp, v["env-uuid"].as_str().unwrap()),
            vec![v["uuid"].as_str().unwrap().to_owned()]
        );
        let env = &resp.env_responses[v["env-uuid"].as_str().unwrap()];
        assert!(
            env.model_status.is_some(),
            "model status is always present, as in Go"
        );
    }
    server.stop().await;
    assert_eq!(batches(dir.path()), want);
}

#[tokio::test]
async fn pipelined_requests_with_good_and_bad_batches_are_answered_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::jsonl(dir.path()).await;
    let mut client = server.client().await;

    const REQUESTS: usize = 40;
    let mut requests = Vec::new();
    for r in 0..REQUESTS {
        let mut bad_key = batch(&format!("bad-key-{r}"), "model-a");
        bad_key.metrics[0].key.clear();
        let mut no_time = batch(&format!("no-time-{r}"), "model-b");
        no_time.metrics.push(pb::Metric {
            key: "k".into(),
            value: "1".into(),
            time: None,
            labels: Default::default(),
        });
        requests.push(SubmitBatchRequest::new(vec![
            batch(&format!("a-{r}"), "model-a"),
            bad_key,
            batch(&format!("b-{r}"), "model-b"),
            pb::MetricBatch {
                uuid: String::new(),
                ..batch("", "model-a")
            },
            pb::MetricBatch {
                model_uuid: String::new(),
                ..batch(&format!("no-model-{r}"), "")
            },
            pb::MetricBatch {
                unit_name: String::new(),
                ..batch(&format!("no-unit-{r}"), "model-a")
            },
            no_time,
            batch(&format!("a2-{r}"), "model-a"),
        ]));
    }

    // Send all requests up front through a channel, reading responses as they come.
    let (tx, rx) = mpsc::channel(REQUESTS);
    for req in requests {
        tx.send(req).await.unwrap();
    }
    drop(tx);
    let mut responses = client
        .submit_batch(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut r = 0;
    while let Some(resp) = responses.next().await {
        let resp = resp.expect("stream stays up despite bad batches");
        assert_eq!(
            acks(&resp, "model-a"),
            vec![format!("a-{r}"), format!("a2-{r}")],
            "request {r}"
        );
        assert_eq!(
            acks(&resp, "model-b"),
            vec![format!("b-{r}")],
            "request {r}"
        );
        let rejected: Vec<(u32, &str, &str)> = resp
            .rejected
            .iter()
            .map(|x| (x.index, x.uuid.as_str(), x.reason.as_str()))
            .collect();
        let (bk, nm, nu, nt) = (
            format!("bad-key-{r}"),
            format!("no-model-{r}"),
            format!("no-unit-{r}"),
            format!("no-time-{r}"),
        );
        assert_eq!(
            rejected,
            vec![
                (1, bk.as_str(), "metrics[0].key: must not be empty"),
                (3, "", "uuid: must not be empty"),
                (4, nm.as_str(), "model_uuid: must not be empty"),
                (5, nu.as_str(), "unit_name: must not be empty"),
                (6, nt.as_str(), "metrics[1].time: must be set"),
            ],
            "request {r}"
        );
        assert!(!resp.uuid.is_empty());
        r += 1;
    }
    assert_eq!(r, REQUESTS, "one response per request");
    server.stop().await;
    let written = field_values(&batches(dir.path()), "uuid");
    let want: Vec<String> = (0..REQUESTS)
        .flat_map(|r| [format!("a-{r}"), format!("b-{r}"), format!("a2-{r}")])
        .collect();
    assert_eq!(written, want, "only accepted batches, in stream order");
}

#[tokio::test]
async fn batch_limits_reject_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = server::Config::default();
    config.limits.max_batches_per_request = 3;
    config.limits.max_metrics_per_batch = 2;
    config.limits.max_labels_per_metric = 1;
    config.limits.max_credential_bytes = 16;
    config.limits.max_string_len = 24;
    let server = Server::jsonl_with(dir.path(), config).await;
    let mut client = server.client().await;

    let too_many = SubmitBatchRequest::new((0..4).map(|i| batch(&format!("x{i}"), "m")).collect());
    let mut many_metrics = batch("many-metrics", "m");
    many_metrics.metrics = vec![many_metrics.metrics[0].clone(); 3];
    let mut labels = batch("labels", "m");
    labels.metrics[0].labels = [
        ("a".to_string(), "1".to_string()),
        ("b".to_string(), "2".to_string()),
    ]
    .into();
    let mut creds = batch("creds", "m");
    creds.credentials = vec![7u8; 17];
    let mut long_value = batch("long-value", "m");
    long_value.metrics[0].value = "v".repeat(25);
    let mut future = batch("future", "m");
    future.created = Some(meterd::record::time_to_timestamp(
        time::OffsetDateTime::now_utc() + Duration::from_secs(3600),
    ));
    let mut ctl = batch("ctl", "m");
    ctl.unit_name = "u/0\n".into();
    let singles = vec![many_metrics, labels, creds, long_value, future, ctl];
    let mut requests = vec![too_many];
    requests.extend(
        singles
            .into_iter()
            .map(|b| SubmitBatchRequest::new(vec![b])),
    );
    requests.push(SubmitBatchRequest::new(vec![batch("fine", "m")]));

    let responses = submit_all(&mut client, requests).await;
    let reasons: Vec<Vec<String>> = responses
        .iter()
        .map(|r| r.rejected.iter().map(|x| x.reason.clone()).collect())
        .collect();
    assert_eq!(
        reasons[0],
        vec!["batches: 4 batches exceed the limit of 3 per request".to_string(); 4]
    );
    assert_eq!(
        reasons[1],
        vec!["metrics: 3 metrics exceed the limit of 2 per batch"]
    );
    assert_eq!(
        reasons[2],
        vec!["metrics[0].labels: 2 labels exceed the limit of 1"]
    );
    assert_eq!(reasons[3], vec!["credentials: longer than 16 bytes"]);
    assert_eq!(reasons[4], vec!["metrics[0].value: longer than 24 bytes"]);
    assert_eq!(reasons[5], vec!["created: more than 5m in the future"]);
    assert_eq!(
        reasons[6],
        vec!["unit_name: contains control character U+000A"]
    );
    assert!(reasons[7].is_empty());
    assert_eq!(acks(&responses[7], "m"), vec!["fine"]);
    for r in &responses[..7] {
        assert!(r.env_responses.is_empty(), "nothing acked: {r:?}");
    }
    server.stop().await;
    assert_eq!(batches(dir.path()).len(), 1);
}

#[tokio::test]
async fn credentials_never_appear_in_debug_output() {
    let b = meterd::record::Check {
        limits: &Default::default(),
        now: time::OffsetDateTime::now_utc(),
    }
    .batch(batch("c", "m"))
    .unwrap();
    let record = meterd::sink::Record::batch(b);
    let debug = format!("{record:?}");
    assert!(
        !debug.contains("secret-macaroon") && !debug.contains("c2VjcmV0"),
        "{debug}"
    );
    assert!(debug.contains("<redacted>"));
}
