//! `Metering`: the `MeteringService` implementation, which admits each call
//! under `--max-in-flight` and counts it.

use std::sync::Arc;

use tonic::{Request, Response, Status, Streaming};

use super::{budget, count_rpc, emit, emit_batch, inflight, submit_batch, Shared};
use crate::pb::metering_service_server::MeteringService;
use crate::pb::{
    EmitBatchRequest, EmitBatchResponse, EmitRequest, EmitResponse, SubmitBatchRequest,
};

/// The `MeteringService` implementation.
#[derive(Clone)]
pub struct Metering {
    pub(super) shared: Arc<Shared>,
}

#[tonic::async_trait]
impl MeteringService for Metering {
    async fn emit(&self, request: Request<EmitRequest>) -> Result<Response<EmitResponse>, Status> {
        let deadline = budget::deadline(request.metadata());
        let result = match self.shared.admit() {
            Ok(admission) => {
                let r = emit::emit(&self.shared, request.into_inner(), deadline).await;
                drop(admission);
                r.map_err(|e| {
                    tracing::debug!(error = %e, "emit failed");
                    Status::from(e)
                })
            }
            Err(e) => Err(Status::from(e)),
        };
        count_rpc(
            "Emit",
            result
                .as_ref()
                .map_or_else(|s| s.code(), |_| tonic::Code::Ok),
        );
        result.map(Response::new)
    }

    async fn emit_batch(
        &self,
        request: Request<EmitBatchRequest>,
    ) -> Result<Response<EmitBatchResponse>, Status> {
        let deadline = budget::deadline(request.metadata());
        let read = request.extensions().get::<inflight::Hold>().cloned();
        let result = match self.shared.admit() {
            Ok(admission) => {
                let r = emit_batch::emit_batch(&self.shared, request.into_inner(), deadline, read)
                    .await;
                drop(admission);
                r.map_err(|e| {
                    tracing::debug!(error = %e, "emit batch failed");
                    Status::from(e)
                })
            }
            Err(e) => Err(Status::from(e)),
        };
        count_rpc(
            "EmitBatch",
            result
                .as_ref()
                .map_or_else(|s| s.code(), |_| tonic::Code::Ok),
        );
        result.map(Response::new)
    }

    type SubmitBatchStream = submit_batch::ResponseStream;

    async fn submit_batch(
        &self,
        request: Request<Streaming<SubmitBatchRequest>>,
    ) -> Result<Response<Self::SubmitBatchStream>, Status> {
        let deadline = budget::deadline(request.metadata());
        let read = request.extensions().get::<inflight::Hold>().cloned();
        let admission = self.shared.admit().map_err(|e| {
            let s = Status::from(e);
            count_rpc("SubmitBatch", s.code());
            s
        })?;
        Ok(Response::new(submit_batch::submit_batch(
            self.shared.clone(),
            request.into_inner(),
            admission,
            deadline,
            read,
        )))
    }
}
