//! `grpc`: forwards to another meterd over the same proto (sidecars chained
//! to an aggregator). Entries go with `EmitBatch` (one `Emit` each to an
//! older meterd without it), batches with `SubmitBatch`; each delivery is
//! one request, answered per record.
//!
//! Every call has a deadline (`--upstream-timeout`), so an upstream that
//! accepts the connection and never answers fails the call instead of
//! holding the forwarder; HTTP/2 keepalive pings on a connection with calls
//! open close a dead one, and the channel then reconnects by itself.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::Code;

use super::{delivery_id, verdict, ProbeFuture, Upstream, UpstreamError, UpstreamFuture, Verdict};
use crate::pb::metering_service_client::MeteringServiceClient;
use crate::pb::{self, EmitBatchRequest, EmitRequest, SubmitBatchRequest};
use crate::sink::{Body, Record};

mod target;

pub use target::Target;

/// Another meterd. Connects lazily and reconnects by itself.
pub struct GrpcUpstream {
    client: MeteringServiceClient<Channel>,
    /// The same connection, for health checks.
    channel: Channel,
    token: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    timeout: Duration,
    /// Set once the upstream answered UNIMPLEMENTED to EmitBatch (a meterd
    /// from before it): entries then go one Emit each, as they used to.
    no_emit_batch: Arc<AtomicBool>,
}

impl GrpcUpstream {
    /// Each call times out after `timeout`; `ca_file` adds trusted CA
    /// certificates for an `https://` target.
    pub fn new(
        target: &Target,
        timeout: Duration,
        token: Option<&str>,
        ca_file: Option<&std::path::Path>,
    ) -> Result<GrpcUpstream, String> {
        let endpoint = |uri: String| {
            Endpoint::from_shared(uri)
                .map_err(|e| format!("grpc={target}: {e}"))
                .map(|e| {
                    // The call's deadline is set on each request (the
                    // upstream sees it) and enforced by `deadline`.
                    e.connect_timeout(timeout)
                        // Pings only while calls are open: enough to find a
                        // connection that stopped answering, without
                        // waking an idle upstream.
                        .http2_keep_alive_interval(timeout.max(Duration::from_secs(1)))
                        .keep_alive_timeout(timeout)
                        .keep_alive_while_idle(false)
                })
        };
        let channel = match target {
            Target::Tcp(authority) => endpoint(format!("http://{authority}"))?.connect_lazy(),
            Target::Tls { authority, host } => {
                let mut tls = ClientTlsConfig::new()
                    .domain_name(host.clone())
                    .with_webpki_roots()
                    .with_native_roots();
                if let Some(path) = ca_file {
                    tls = tls.ca_certificate(read_ca(path)?);
                }
                endpoint(format!("https://{authority}"))?
                    .tls_config(tls)
                    .map_err(|e| format!("grpc={target}: {e}"))?
                    .connect_lazy()
            }
            Target::Unix(path) => {
                let path = path.clone();
                endpoint("http://localhost".into())?.connect_with_connector_lazy(tower::service_fn(
                    move |_| {
                        let path = path.clone();
                        async move {
                            Ok::<_, std::io::Error>(TokioIo::new(
                                tokio::net::UnixStream::connect(path).await?,
                            ))
                        }
                    },
                ))
            }
        };
        let token = token
            .map(|t| {
                format!("Bearer {t}")
                    .parse()
                    .map_err(|_| "--upstream-token-file: not a valid header value".to_string())
            })
            .transpose()?;
        Ok(GrpcUpstream {
            client: MeteringServiceClient::new(channel.clone()),
            channel,
            token,
            timeout,
            no_emit_batch: Arc::new(AtomicBool::new(false)),
        })
    }

    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.set_timeout(self.timeout);
        if let Some(t) = &self.token {
            req.metadata_mut().insert("authorization", t.clone());
        }
        req
    }

    fn deliver_batches(&self, records: &[Record]) -> UpstreamFuture {
        let mut client = self.client.clone();
        let batches: Vec<pb::MetricBatch> = records
            .iter()
            .filter_map(|r| r.batch_body().map(|b| pb::MetricBatch::from(&*b)))
            .collect();
        let uuids: Vec<(String, String)> = batches
            .iter()
            .map(|b| (b.uuid.clone(), b.model_uuid.clone()))
            .collect();
        let req = self.request(tokio_stream::iter(vec![SubmitBatchRequest::new(batches)]));
        self.deadline(async move {
            let grpc = |s: tonic::Status| UpstreamError::grpc(&s, "batches");
            let mut responses = client.submit_batch(req).await.map_err(grpc)?.into_inner();
            let resp = responses.message().await.map_err(grpc)?.ok_or_else(|| {
                UpstreamError::transient("upstream closed the stream without answering")
            })?;
            let mut verdicts = vec![Verdict::Retry; uuids.len()];
            for r in &resp.rejected {
                // The batches limit comes as every batch rejected with a
                // reason naming the request: split, never dead-letter.
                if let Some(class) = verdict::rejection(&r.reason, "batches") {
                    return Err(UpstreamError {
                        class,
                        message: r.reason.clone(),
                    });
                }
                if let Some(v) = verdicts.get_mut(r.index as usize) {
                    *v = Verdict::Rejected(r.reason.clone());
                }
            }
            for (v, (uuid, model)) in verdicts.iter_mut().zip(&uuids) {
                let acked = resp
                    .env_responses
                    .get(model)
                    .is_some_and(|e| e.acks.contains(uuid));
                if acked && *v == Verdict::Retry {
                    *v = Verdict::Acked;
                }
            }
            Ok(verdicts)
        })
    }

    fn deliver_entries(&self, records: &[Record]) -> UpstreamFuture {
        let mut client = self.client.clone();
        let entries: Vec<pb::Entry> = records
            .iter()
            .filter_map(|r| match &r.body {
                Body::Entry(e) => {
                    let mut entry = pb::Entry::from(e);
                    // A content-derived id lets the upstream drop re-sends of
                    // entries that came without one.
                    entry.id = delivery_id(r);
                    Some(entry)
                }
                Body::Batch(_) | Body::BatchLine => None,
            })
            .collect();
        if self.no_emit_batch.load(Ordering::Relaxed) {
            let requests: Vec<_> = entries
                .into_iter()
                .map(|e| self.request(EmitRequest { entry: Some(e) }))
                .collect();
            return self.deadline(emit_one_by_one(client, requests));
        }
        let n = entries.len();
        let batch = self.request(EmitBatchRequest::new(entries));
        let no_emit_batch = self.no_emit_batch.clone();
        self.deadline(async move {
            let results = match client.emit_batch(batch).await {
                Ok(resp) => resp.into_inner().results,
                Err(s) if s.code() == Code::Unimplemented => {
                    // Sent again (after the usual pause) the old way.
                    tracing::info!("upstream meterd has no EmitBatch (an older version); forwarding one Emit per entry");
                    no_emit_batch.store(true, Ordering::Relaxed);
                    return Err(UpstreamError::grpc(&s, "entries"));
                }
                Err(s) => return Err(UpstreamError::grpc(&s, "entries")),
            };
            if results.len() != n {
                return Err(UpstreamError::transient(format!(
                    "upstream answered for {} of {n} entries",
                    results.len()
                )));
            }
            Ok(results
                .into_iter()
                .enumerate()
                .map(|(i, r)| {
                    if r.rejected.is_empty() {
                        return if r.duplicate {
                            Verdict::Duplicate
                        } else {
                            Verdict::Acked
                        };
                    }
                    // About this one entry: named as Emit would, not by its
                    // place in our request.
                    Verdict::Rejected(
                        match r.rejected.strip_prefix(&format!("entries[{i}].")) {
                            Some(rest) => format!("entry.{rest}"),
                            None => r.rejected,
                        },
                    )
                })
                .collect())
        })
    }

    /// Bounds a whole exchange by the timeout, connecting included, and a
    /// response stream that never delivers its message as well.
    fn deadline(
        &self,
        call: impl std::future::Future<Output = Result<Vec<Verdict>, UpstreamError>> + Send + 'static,
    ) -> UpstreamFuture {
        let timeout = self.timeout;
        Box::pin(async move {
            tokio::time::timeout(timeout, call)
                .await
                .map(|r| {
                    r.map_err(|e| match e.message.as_str() {
                        // tonic's words for its connect timeout (an upstream
                        // that accepts TCP but never completes HTTP/2).
                        "Cancelled: Timeout expired" => UpstreamError {
                            message: format!(
                                "no connection within {} (--upstream-timeout)",
                                humantime::format_duration(timeout)
                            ),
                            ..e
                        },
                        _ => e,
                    })
                })
                .unwrap_or_else(|_| {
                    Err(UpstreamError {
                        class: verdict::Failure::Transient,
                        message: format!(
                            "no answer within {} (--upstream-timeout)",
                            humantime::format_duration(timeout)
                        ),
                    })
                })
        })
    }
}

impl Upstream for GrpcUpstream {
    fn deliver(&self, records: Arc<[Record]>) -> UpstreamFuture {
        if records.first().is_some_and(|r| !r.is_entry()) {
            self.deliver_batches(&records)
        } else {
            self.deliver_entries(&records)
        }
    }

    /// The upstream meterd's own health check (which follows its sinks):
    /// SERVING means it takes writes.
    fn probe(&self) -> Option<ProbeFuture> {
        use tonic_health::pb::health_client::HealthClient;
        use tonic_health::pb::{health_check_response::ServingStatus, HealthCheckRequest};
        let mut client = HealthClient::new(self.channel.clone());
        let req = self.request(HealthCheckRequest::default());
        Some(Box::pin(async move {
            let status = client
                .check(req)
                .await
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
                .into_inner()
                .status();
            match status {
                ServingStatus::Serving => Ok(()),
                other => Err(format!("upstream is {}", other.as_str_name())),
            }
        }))
    }
}

/// The way to an older upstream: one Emit per entry, in order, so that
/// its ledger keeps the order of this spool.
async fn emit_one_by_one(
    mut client: MeteringServiceClient<Channel>,
    requests: Vec<tonic::Request<EmitRequest>>,
) -> Result<Vec<Verdict>, UpstreamError> {
    let mut verdicts = Vec::with_capacity(requests.len());
    let mut failed = None;
    for req in requests {
        if failed.is_some() {
            verdicts.push(Verdict::Retry);
            continue;
        }
        match client.emit(req).await {
            Ok(resp) if resp.get_ref().duplicate => verdicts.push(Verdict::Duplicate),
            Ok(_) => verdicts.push(Verdict::Acked),
            Err(s) if s.code() == Code::InvalidArgument => {
                verdicts.push(Verdict::Rejected(s.message().to_owned()))
            }
            Err(s) => {
                failed = Some(UpstreamError::grpc(&s, "entry"));
                verdicts.push(Verdict::Retry);
            }
        }
    }
    match failed {
        // Nothing got through: report the call as failed.
        Some(e) if verdicts.iter().all(|v| *v == Verdict::Retry) => Err(e),
        _ => Ok(verdicts),
    }
}

/// Reads a PEM file of CA certificates for `--grpc-ca-file`.
pub fn read_ca(path: &std::path::Path) -> Result<Certificate, String> {
    let pem = std::fs::read(path).map_err(|e| format!("--grpc-ca-file {}: {e}", path.display()))?;
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!(
            "--grpc-ca-file {}: no PEM certificate in it",
            path.display()
        ));
    }
    Ok(Certificate::from_pem(pem))
}
