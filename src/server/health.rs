//! Serving status, kept in `grpc.health.v1.Health` for the whole server
//! (`""`) and for `metering.v1.MeteringService` (whether writes succeed),
//! and for `metering.v1.LedgerService` (whether there is a ledger to read).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

/// The service name that health checks may ask for.
pub const SERVICE_NAME: &str = "metering.v1.MeteringService";
/// The reader service's name in health checks.
pub const LEDGER_SERVICE_NAME: &str = "metering.v1.LedgerService";

/// Tracks whether the sinks are taking writes. Safe for concurrent use;
/// only transitions reach the health service.
#[derive(Clone)]
pub(crate) struct Health {
    reporter: HealthReporter,
    serving: Arc<AtomicBool>,
    /// Set at shutdown; from then on writes that finish no longer flip it back.
    stopping: Arc<AtomicBool>,
    /// Whether the sinks report their own health. Then it alone decides:
    /// a failed write already turned the sink unhealthy, and a write result
    /// arriving after the sink's probe recovered must not turn it back.
    follows_sinks: bool,
}

impl Health {
    /// `readable`: whether a sink keeps a ledger that LedgerService reads
    /// (a forwarding-only sidecar has none: NOT_SERVING for it, for good).
    /// `sinks`: the health the sinks report; when there is none (a capture
    /// or stderr sink), the result of each write decides instead.
    pub(crate) async fn new(
        reporter: HealthReporter,
        readable: bool,
        sinks: Vec<crate::sink::SinkHealth>,
    ) -> Self {
        let health = Health {
            reporter,
            serving: Arc::new(AtomicBool::new(true)),
            stopping: Arc::new(AtomicBool::new(false)),
            follows_sinks: !sinks.is_empty(),
        };
        health.publish(true).await;
        let status = if readable {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        health
            .reporter
            .set_service_status(LEDGER_SERVICE_NAME, status)
            .await;
        health.follow(sinks);
        health
    }

    /// Records whether a write succeeded, for sinks that do not report
    /// their own health: a failure flips the status to NOT_SERVING; the
    /// next success flips it back.
    pub(crate) fn observe_write(&self, ok: bool) {
        if !self.follows_sinks {
            self.observe(ok);
        }
    }

    fn observe(&self, ok: bool) {
        if self.stopping.load(Ordering::Acquire) {
            return;
        }
        if self.serving.swap(ok, Ordering::AcqRel) != ok {
            if ok {
                tracing::info!("writes succeed again; serving");
            } else {
                tracing::warn!("writes are failing; health is NOT_SERVING until the sink recovers");
            }
            let this = self.clone();
            // Publish the latest value, not `ok`: transitions racing each
            // other then still settle on the current state.
            tokio::spawn(async move {
                let now = this.serving.load(Ordering::Acquire);
                this.publish(now).await;
            });
        }
    }

    /// Follows the sinks' own health: a sink that recovers (the ledger's
    /// writer probes a failed disk every second) turns health back to
    /// SERVING with no client write. Each sink's change is logged once and
    /// shown as `meterd_sink_healthy{sink}`.
    fn follow(&self, sinks: Vec<crate::sink::SinkHealth>) {
        let states: Arc<std::sync::Mutex<Vec<bool>>> =
            Arc::new(std::sync::Mutex::new(vec![true; sinks.len()]));
        for (i, mut sink) in sinks.into_iter().enumerate() {
            let (this, states) = (self.clone(), states.clone());
            tokio::spawn(async move {
                let labels = crate::metrics::SinkLabels {
                    sink: sink.name.clone(),
                };
                loop {
                    let healthy = *sink.healthy.borrow_and_update();
                    crate::metrics::metrics()
                        .sink_healthy
                        .get_or_create(&labels)
                        .set(i64::from(healthy));
                    {
                        let mut s = states
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        let was = std::mem::replace(&mut s[i], healthy);
                        if was != healthy && healthy {
                            tracing::info!(sink = %sink.name, "sink takes writes again");
                        }
                        // Under the lock: two sinks changing at once must
                        // not publish their views of "all" out of order.
                        this.observe(s.iter().all(|h| *h));
                    }
                    if sink.healthy.changed().await.is_err() {
                        return; // the sink is gone (shutdown)
                    }
                }
            });
        }
    }

    /// Marks the server as going away (shutdown).
    pub(crate) async fn stopping(&self) {
        self.stopping.store(true, Ordering::Release);
        self.serving.store(false, Ordering::Release);
        self.publish(false).await;
        self.reporter
            .set_service_status(LEDGER_SERVICE_NAME, ServingStatus::NotServing)
            .await;
    }

    async fn publish(&self, serving: bool) {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for name in ["", SERVICE_NAME] {
            self.reporter.set_service_status(name, status).await;
        }
    }
}
