//! `metering.v1.LedgerService`: `Tail` and `Usage` over the ledger that the
//! jsonl sink writes. Reads run on blocking threads (file I/O, decoding, the
//! usage engine never run on async workers), and only as fast as the client
//! takes the responses, so a slow client holds a fixed amount of memory and
//! never slows the writers, which do not know readers exist.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;

use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::{count_rpc, Shared};
use crate::ledger::Ledger;
use crate::pb::ledger_service_server::LedgerService;
use crate::pb::{HeadRequest, HeadResponse, TailRequest, UsageRequest};
use crate::read::build::Checkpoints;

mod head;
mod tail;
mod usage;

/// The `LedgerService` implementation. `ledger` is `None` when no sink
/// keeps a ledger (a forwarding-only sidecar): every call then fails.
#[derive(Clone)]
pub struct Reader {
    shared: Arc<Shared>,
    ledger: Option<Arc<Ledger>>,
    checkpoints: Arc<Checkpoints>,
    /// `--max-usage-calls`: Usage calls computing at once.
    usage_slots: Arc<tokio::sync::Semaphore>,
    max_usage_calls: usize,
    /// Cancelled at shutdown: following `Tail` calls end instead of holding
    /// the server open until the grace period runs out.
    stop: CancellationToken,
}

impl Reader {
    pub(crate) fn new(
        shared: Arc<Shared>,
        ledger: Option<Arc<Ledger>>,
        max_usage_calls: usize,
        stop: CancellationToken,
    ) -> Reader {
        let checkpoints = Arc::new(Checkpoints::new());
        if let Some(ledger) = &ledger {
            usage::spawn_checkpointer(ledger.clone(), checkpoints.clone(), stop.clone());
        }
        Reader {
            shared,
            ledger,
            checkpoints,
            usage_slots: Arc::new(tokio::sync::Semaphore::new(max_usage_calls.max(1))),
            max_usage_calls: max_usage_calls.max(1),
            stop,
        }
    }

    /// One of `--max-usage-calls`, waiting up to `wait` for one to end.
    async fn usage_slot(&self, wait: Duration) -> Result<OwnedSemaphorePermit, Status> {
        static BUSY: super::quiet::Quiet = super::quiet::Quiet::new("usage calls busy");
        let slots = self.usage_slots.clone();
        let slot = match slots.clone().try_acquire_owned() {
            Ok(s) => Ok(s),
            Err(_) => tokio::time::timeout(wait, slots.acquire_owned())
                .await
                .ok()
                // The semaphore is never closed.
                .and_then(Result::ok)
                .ok_or_else(|| super::status::usage_busy(self.max_usage_calls, wait)),
        };
        match &slot {
            Ok(_) => BUSY.accepted(),
            Err(s) => BUSY.refused(&s.message()),
        }
        slot
    }

    fn ledger(&self) -> Result<Arc<Ledger>, Status> {
        self.ledger.clone().ok_or_else(super::status::no_ledger)
    }
}

#[tonic::async_trait]
impl LedgerService for Reader {
    type TailStream = tail::ResponseStream;

    async fn tail(
        &self,
        request: Request<TailRequest>,
    ) -> Result<Response<Self::TailStream>, Status> {
        let started = self.ledger().and_then(|ledger| {
            let admission = self.shared.admit()?;
            tail::tail(ledger, request.into_inner(), admission, self.stop.clone())
        });
        started
            .map(Response::new)
            .inspect_err(|s| count_rpc("Tail", s.code()))
    }

    type UsageStream = usage::ResponseStream;

    async fn usage(
        &self,
        request: Request<UsageRequest>,
    ) -> Result<Response<Self::UsageStream>, Status> {
        let wait = super::budget::wait_within(super::budget::deadline(request.metadata()))
            .min(usage::USAGE_WAIT);
        let started = match self.ledger() {
            Err(s) => Err(s),
            Ok(ledger) => match self.usage_slot(wait).await {
                Err(s) => Err(s),
                Ok(slot) => self
                    .shared
                    .admit()
                    .map_err(Status::from)
                    .and_then(|admission| {
                        usage::usage(
                            ledger,
                            self.checkpoints.clone(),
                            request.into_inner(),
                            admission,
                            slot,
                        )
                    }),
            },
        };
        started
            .map(Response::new)
            .inspect_err(|s| count_rpc("Usage", s.code()))
    }

    async fn head(&self, request: Request<HeadRequest>) -> Result<Response<HeadResponse>, Status> {
        let answer = self
            .ledger()
            .and_then(|ledger| head::head(&ledger, &request.into_inner()));
        count_rpc(
            "Head",
            answer
                .as_ref()
                .map_or_else(|s| s.code(), |_| tonic::Code::Ok),
        );
        answer.map(Response::new)
    }
}
