//! The tonic server: `MeteringService` (writers) and `LedgerService`
//! (readers) beside `grpc.health.v1.Health` and server reflection (v1 and
//! v1alpha), on TCP (optionally TLS) and Unix-socket listeners, with
//! admission control and bearer-token auth (writer and reader tokens kept
//! apart).
//!
//! Here: the state every call shares (admission, queue room, handing
//! records to the sink). `config.rs` holds the settings, `metering.rs` the
//! `MeteringService`, `run.rs` the wiring of the services onto the
//! listeners and the shutdown.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::{code_name, metrics, RpcLabels};
use crate::record::Limits;
use crate::sink::{Outcome, Record, Sink, SinkError};

mod accept;
mod auth;
mod authority;
mod budget;
mod config;
mod conn;
mod emit;
mod emit_batch;
mod health;
mod inflight;
mod ledger;
mod listen;
mod metering;
mod quiet;
mod run;
mod status;
mod submit_batch;
mod tls;

pub use auth::{Access, Auth, Role};
pub use config::{default_usage_calls, Config};
pub use health::{LEDGER_SERVICE_NAME, SERVICE_NAME};
pub use listen::{ListenAddr, Listener};
pub use metering::Metering;
pub use run::{run, Interceptor};
pub use tls::{Tls, TlsFiles};

/// State shared by every call.
pub(crate) struct Shared {
    sink: Arc<dyn Sink>,
    limits: Limits,
    health: health::Health,
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
    budget: budget::Budget,
}

/// A call admitted under `--max-in-flight`; releases its slot when dropped.
pub(crate) struct Admission {
    _permit: OwnedSemaphorePermit,
}

impl Drop for Admission {
    fn drop(&mut self) {
        metrics().in_flight.dec();
    }
}

impl Shared {
    /// Admits a call, or refuses it at once when the server is full.
    fn admit(&self) -> Result<Admission, status::Error> {
        let permit =
            self.in_flight
                .clone()
                .try_acquire_owned()
                .map_err(|_| status::Error::Busy {
                    max_in_flight: self.max_in_flight,
                })?;
        metrics().in_flight.inc();
        Ok(Admission { _permit: permit })
    }

    /// Takes room for `records` in `--max-queue-bytes`, waiting up to
    /// [`budget::QUEUE_WAIT`] or most of what is left until `deadline`.
    async fn room(
        &self,
        records: &[Record],
        deadline: Option<tokio::time::Instant>,
    ) -> Result<budget::Held, status::Error> {
        static FULL: quiet::Quiet = quiet::Quiet::new("queue full");
        match self
            .budget
            .take(records, budget::wait_within(deadline))
            .await
        {
            Ok(held) => {
                FULL.accepted();
                Ok(held)
            }
            Err(e) => {
                FULL.refused(&e);
                Err(e)
            }
        }
    }

    /// Hands records to the sink now (so they are written in call order)
    /// and returns a future of the outcome. The write is awaited by a task
    /// of its own, which keeps health in step with it and holds the room
    /// `held` until the sink answers, also when the caller has gone.
    fn submit(
        self: &Arc<Self>,
        records: Arc<[Record]>,
        held: budget::Held,
    ) -> impl Future<Output = Result<Vec<Outcome>, SinkError>> + Send + 'static {
        let write = self.sink.submit(records);
        let this = self.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            // Logged once per change of state, with counts (see quiet.rs).
            static FAILING: quiet::Quiet = quiet::Quiet::new("writes failing");
            static FULL: quiet::Quiet = quiet::Quiet::new("sink full");
            let result = write.await;
            drop(held);
            match &result {
                Ok(_) => {
                    FAILING.accepted();
                    FULL.accepted();
                    this.health.observe_write(true);
                }
                Err(e @ SinkError::Unavailable(_)) => {
                    FAILING.refused(e);
                    this.health.observe_write(false);
                }
                Err(e @ SinkError::Exhausted(_)) => FULL.refused(e),
            }
            // A failed send: the caller has gone.
            let _ = tx.send(result);
        });
        async move {
            rx.await.unwrap_or_else(|_| {
                Err(SinkError::Unavailable(
                    "the write's task ended without an answer".into(),
                ))
            })
        }
    }
}

/// Counts a finished RPC.
pub(crate) fn count_rpc(rpc: &'static str, code: tonic::Code) {
    metrics()
        .requests
        .get_or_create(&RpcLabels {
            rpc,
            code: code_name(code),
        })
        .inc();
}
