//! Health of a pass-through upstream. With no spool, a client's write
//! succeeds only if the upstream answers, so the upstream's reachability is
//! the sink's health: a failed delivery turns it unhealthy, and a probe in
//! the background (the upstream's own health check, a `HEAD` on the
//! collector, the NATS connection's state) turns it healthy again once the
//! upstream is back, with no client write (a readiness probe or a load
//! balancer sends none).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Upstream;

/// Pause between two probes of a failed upstream: health is back within
/// about this plus one probe's time of the upstream returning.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// Pause between two probes of an upstream that answers: with nothing
/// written, health turns NOT_SERVING within about this plus one probe's
/// timeout of the upstream going away (4 s).
const WATCH_EVERY: Duration = Duration::from_secs(2);
/// Longest wait for one probe (shorter when `--upstream-timeout` is), so an
/// upstream that accepts connections and never answers cannot hold the next
/// probe back for long.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether a pass-through upstream answers. Safe for concurrent use.
pub(super) struct UpstreamHealth {
    healthy: watch::Sender<bool>,
}

impl UpstreamHealth {
    /// Starts the prober; it ends when `stop` is cancelled.
    pub(super) fn start(
        name: String,
        upstream: Arc<dyn Upstream>,
        timeout: Duration,
        stop: CancellationToken,
    ) -> Arc<UpstreamHealth> {
        let (healthy, _) = watch::channel(true);
        let this = Arc::new(UpstreamHealth { healthy });
        let down = this.healthy.subscribe();
        tokio::spawn(probe(
            name,
            upstream,
            this.clone(),
            down,
            timeout.min(PROBE_TIMEOUT),
            stop,
        ));
        this
    }

    pub(super) fn watch(&self) -> watch::Receiver<bool> {
        self.healthy.subscribe()
    }

    /// A delivery's outcome: whether the upstream answered.
    pub(super) fn observe(&self, answered: bool) {
        self.healthy
            .send_if_modified(|h| std::mem::replace(h, answered) != answered);
    }
}

/// Probes the upstream every [`WATCH_EVERY`] while it answers (a failed
/// delivery or probe turns it unhealthy), then every [`PROBE_EVERY`] until
/// it answers again (or a delivery succeeds meanwhile).
async fn probe(
    name: String,
    upstream: Arc<dyn Upstream>,
    health: Arc<UpstreamHealth>,
    mut state: watch::Receiver<bool>,
    timeout: Duration,
    stop: CancellationToken,
) {
    loop {
        loop {
            tokio::select! {
                r = state.wait_for(|h| !h) => match r {
                    Ok(_) => break,
                    Err(_) => return,
                },
                () = tokio::time::sleep(WATCH_EVERY) => {}
                () = stop.cancelled() => return,
            }
            let Some(check) = upstream.probe() else {
                continue; // nothing to probe with: deliveries decide
            };
            let answered = matches!(tokio::time::timeout(timeout, check).await, Ok(Ok(())));
            if !answered {
                health.observe(false);
                break;
            }
        }
        tracing::warn!(sink = %name, "upstream not answering (pass-through); probing it every second");
        loop {
            tokio::select! {
                () = tokio::time::sleep(PROBE_EVERY) => {}
                () = stop.cancelled() => return,
            }
            if *state.borrow() {
                break; // a delivery went through meanwhile
            }
            let Some(check) = upstream.probe() else {
                // Nothing to probe with: the next delivery decides.
                tokio::select! {
                    r = state.wait_for(|h| *h) => if r.is_err() { return },
                    () = stop.cancelled() => return,
                }
                break;
            };
            match tokio::time::timeout(timeout, check).await {
                Ok(Ok(())) => {
                    tracing::info!(sink = %name, "upstream answers again");
                    health.observe(true);
                    break;
                }
                Ok(Err(e)) => tracing::debug!(sink = %name, error = %e, "upstream probe failed"),
                Err(_) => tracing::debug!(sink = %name, "upstream probe timed out"),
            }
        }
    }
}
