//! `grpc`: forwards to another meterd over the same proto (sidecars chained
//! to an aggregator). Entries go with `Emit`, batches with `SubmitBatch`.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

use super::forward::{delivery_id, Upstream, UpstreamError, UpstreamFuture, Verdict};
use super::{Body, Record};
use crate::pb::metering_service_client::MeteringServiceClient;
use crate::pb::{self, EmitRequest, SubmitBatchRequest};
use crate::server::ListenAddr;

/// Another meterd. Connects lazily and reconnects by itself.
pub struct GrpcUpstream {
    client: MeteringServiceClient<Channel>,
    token: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl GrpcUpstream {
    /// `addr` is `HOST:PORT` or `unix:/path`; each call times out after `timeout`.
    pub fn new(
        addr: &ListenAddr,
        timeout: Duration,
        token: Option<&str>,
    ) -> Result<GrpcUpstream, String> {
        let channel = match addr {
            ListenAddr::Tcp(a) => Endpoint::from_shared(format!("http://{a}"))
                .map_err(|e| format!("grpc={a}: {e}"))?
                .connect_timeout(timeout)
                .timeout(timeout)
                .connect_lazy(),
            ListenAddr::Unix(path) => {
                let path = path.clone();
                Endpoint::from_static("http://localhost")
                    .connect_timeout(timeout)
                    .timeout(timeout)
                    .connect_with_connector_lazy(tower::service_fn(move |_| {
                        let path = path.clone();
                        async move {
                            Ok::<_, std::io::Error>(TokioIo::new(
                                tokio::net::UnixStream::connect(path).await?,
                            ))
                        }
                    }))
            }
        };
        let token = token
            .map(|t| {
                format!("Bearer {t}")
                    .parse()
                    .map_err(|_| "--grpc-token: not a valid header value".to_string())
            })
            .transpose()?;
        Ok(GrpcUpstream {
            client: MeteringServiceClient::new(channel),
            token,
        })
    }

    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        if let Some(t) = &self.token {
            req.metadata_mut().insert("authorization", t.clone());
        }
        req
    }
}

impl Upstream for GrpcUpstream {
    fn deliver(&self, records: Arc<[Record]>) -> UpstreamFuture {
        let mut client = self.client.clone();
        let batches: Vec<pb::MetricBatch> = records
            .iter()
            .filter_map(|r| match &r.body {
                Body::Batch(b) => Some(pb::MetricBatch::from(b)),
                Body::Entry(_) => None,
            })
            .collect();
        if !batches.is_empty() {
            let uuids: Vec<(String, String)> = batches
                .iter()
                .map(|b| (b.uuid.clone(), b.model_uuid.clone()))
                .collect();
            let req = self.request(tokio_stream::iter(vec![SubmitBatchRequest { batches }]));
            return Box::pin(async move {
                let mut responses = client
                    .submit_batch(req)
                    .await
                    .map_err(status_error)?
                    .into_inner();
                let resp = responses
                    .message()
                    .await
                    .map_err(status_error)?
                    .ok_or_else(|| {
                        UpstreamError("upstream closed the stream without answering".into())
                    })?;
                let mut verdicts = vec![Verdict::Retry; uuids.len()];
                for r in &resp.rejected {
                    if let Some(v) = verdicts.get_mut(r.index as usize) {
                        *v = Verdict::Rejected(r.reason.clone());
                    }
                }
                for (i, (uuid, model)) in uuids.iter().enumerate() {
                    let acked = resp
                        .env_responses
                        .get(model)
                        .is_some_and(|e| e.acks.contains(uuid));
                    if acked && verdicts[i] == Verdict::Retry {
                        verdicts[i] = Verdict::Acked;
                    }
                }
                Ok(verdicts)
            });
        }
        let entries: Vec<EmitRequest> = records
            .iter()
            .filter_map(|r| match &r.body {
                Body::Entry(e) => {
                    let mut entry = pb::Entry::from(e);
                    // A content-derived id lets the upstream drop re-sends of
                    // entries that came without one.
                    entry.id = delivery_id(r);
                    Some(EmitRequest { entry: Some(entry) })
                }
                Body::Batch(_) => None,
            })
            .collect();
        let requests: Vec<_> = entries.into_iter().map(|e| self.request(e)).collect();
        Box::pin(async move {
            let mut verdicts = Vec::with_capacity(requests.len());
            let mut failed = None;
            // In order, one at a time: the upstream ledger keeps the order of this spool.
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
                        failed = Some(status_error(s));
                        verdicts.push(Verdict::Retry);
                    }
                }
            }
            match failed {
                // Nothing got through: report the call as failed.
                Some(e) if verdicts.iter().all(|v| *v == Verdict::Retry) => Err(e),
                _ => Ok(verdicts),
            }
        })
    }
}

fn status_error(s: tonic::Status) -> UpstreamError {
    UpstreamError(format!("{:?}: {}", s.code(), s.message()))
}
