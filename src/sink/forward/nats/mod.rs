//! `nats`: publishes to NATS JetStream. Every record is one message whose
//! payload is its Go-compatible JSON line (without the newline), on a subject
//! made from a template (`metering.entries.{kind}`,
//! `metering.batches.{model_uuid}`), with a `Nats-Msg-Id` header that is the
//! same on every re-send ([`delivery_id`]), so that the stream's duplicate
//! window drops re-sends. A record counts as delivered only once its PubAck
//! arrived; until then it stays in the forwarding spool.

mod subject;

use std::sync::{Arc, Weak};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, stream};
use async_nats::{ConnectOptions, ServerAddr};
use futures_util::future::join_all;
use tokio::sync::OnceCell;

use super::{
    delivery_id, ForwardOptions, NatsOptions, ProbeFuture, Upstream, UpstreamError, UpstreamFuture,
    Verdict,
};
use crate::sink::{Body, Record};
use subject::Template;

/// A JetStream stream reached through a NATS client that connects in the
/// background and reconnects by itself.
pub struct NatsUpstream {
    client: async_nats::Client,
    js: jetstream::Context,
    entries: Template,
    batches: Template,
    /// The stream to get or create (only with `create_stream`).
    stream: Option<Arc<StreamSetup>>,
}

struct StreamSetup {
    config: stream::Config,
    /// Set once the stream is known to exist.
    ready: OnceCell<()>,
}

/// A `nats=` target and the `--nats-*` flags, checked.
struct Checked {
    addrs: Vec<ServerAddr>,
    user_pass: Option<(String, String)>,
    entries: Template,
    batches: Template,
    /// The subjects of a stream to create (only with `create_stream`).
    stream_subjects: Option<Vec<String>>,
}

/// Checks a `nats=` target and the `--nats-*` flags without connecting
/// (for `check-config` and start-up).
pub fn validate(target: &str, nats: &NatsOptions) -> Result<(), String> {
    check(target, nats).map(|_| ())
}

fn check(target: &str, nats: &NatsOptions) -> Result<Checked, String> {
    let entries = Template::parse(&nats.entries_subject, "--nats-entries-subject")?;
    let batches = Template::parse(&nats.batches_subject, "--nats-batches-subject")?;
    let mut addrs = Vec::new();
    let mut user_pass = None;
    for url in target.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        let addr: ServerAddr = url
            .parse()
            .map_err(|e| format!("nats={}: not a NATS URL: {e}", crate::sink::redact_url(url)))?;
        if addr.has_user_pass() && user_pass.is_none() {
            user_pass = Some((
                percent_decode(addr.username().unwrap_or_default()),
                percent_decode(addr.password().unwrap_or_default()),
            ));
        }
        addrs.push(addr);
    }
    if addrs.is_empty() {
        return Err("sink nats needs at least one URL: nats=nats://HOST:PORT".into());
    }
    let stream_subjects = if nats.create_stream {
        if nats.stream.is_empty()
            || nats
                .stream
                .chars()
                .any(|c| matches!(c, '.' | '*' | '>' | '/' | '\\') || c.is_whitespace())
        {
            return Err(format!(
                "--nats-stream {:?}: a stream name must be non-empty, without '.', '*', '>', '/', '\\' or whitespace",
                nats.stream
            ));
        }
        let mut subjects = vec![
            entries.wildcard("--nats-entries-subject")?,
            batches.wildcard("--nats-batches-subject")?,
        ];
        subjects.dedup();
        Some(subjects)
    } else {
        None
    };
    Ok(Checked {
        addrs,
        user_pass,
        entries,
        batches,
        stream_subjects,
    })
}

impl NatsUpstream {
    /// `target` is one NATS URL or several separated by commas. Returns at
    /// once: the connection is made (and remade) in the background.
    pub async fn connect(target: &str, options: &ForwardOptions) -> Result<NatsUpstream, String> {
        let Checked {
            addrs,
            user_pass,
            entries,
            batches,
            stream_subjects,
        } = check(target, &options.nats)?;
        let mut connect = ConnectOptions::new()
            .name("meterd")
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(options.timeout)
            .request_timeout(Some(options.timeout))
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Connected => tracing::info!("nats: connected"),
                    async_nats::Event::Disconnected => {
                        tracing::warn!("nats: disconnected; reconnecting")
                    }
                    // Every failed reconnect attempt: the forwarder already
                    // says when the upstream is unreachable.
                    async_nats::Event::ClientError(e) => tracing::debug!(error = %e, "nats"),
                    other => tracing::warn!(event = %other, "nats"),
                }
            });
        if let Some((user, pass)) = user_pass {
            connect = connect.user_and_password(user, pass);
        }
        if let Some(token) = &options.token {
            connect = connect.token(token.clone());
        }
        let client = connect
            .connect(addrs)
            .await
            .map_err(|e| format!("sink nats: {e}"))?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(options.timeout);

        let nats = &options.nats;
        let stream = stream_subjects.map(|subjects| {
            Arc::new(StreamSetup {
                config: stream::Config {
                    name: nats.stream.clone(),
                    subjects,
                    num_replicas: nats.replicas.max(1),
                    duplicate_window: nats.duplicate_window,
                    storage: stream::StorageType::File,
                    ..Default::default()
                },
                ready: OnceCell::new(),
            })
        });
        if let Some(setup) = &stream {
            // Create the stream as soon as NATS is reachable, not only at the
            // first record, so that consumers can be set up beforehand.
            tokio::spawn(create_in_background(
                Arc::downgrade(setup),
                js.clone(),
                options.retry_max,
            ));
        }
        Ok(NatsUpstream {
            client,
            js,
            entries,
            batches,
            stream,
        })
    }

    fn subject(&self, record: &Record) -> String {
        match &record.body {
            Body::Entry(e) => self.entries.render(&|name| match name {
                "kind" => e.kind.as_str(),
                "vm_id" => &e.vm_id,
                _ => "",
            }),
            Body::Batch(_) | Body::BatchLine => {
                let b = record.batch_body();
                let b = b.as_deref();
                self.batches.render(&|name| match (name, b) {
                    ("model_uuid", Some(b)) => &b.model_uuid,
                    ("unit", Some(b)) => &b.unit_name,
                    _ => "",
                })
            }
        }
    }
}

/// Gets or creates the stream once (concurrent callers wait for one attempt).
async fn ensure_stream(setup: &StreamSetup, js: &jetstream::Context) -> Result<(), UpstreamError> {
    setup
        .ready
        .get_or_try_init(|| async {
            let info = js
                .get_or_create_stream(setup.config.clone())
                .await
                .map_err(|e| {
                    UpstreamError::transient(format!(
                        "nats: get or create stream {}: {e}",
                        setup.config.name
                    ))
                })?;
            let config = &info.cached_info().config;
            if config.num_replicas != setup.config.num_replicas {
                tracing::warn!(
                    stream = %config.name,
                    replicas = config.num_replicas,
                    wanted = setup.config.num_replicas,
                    "nats: the stream exists with another replica count; left as it is"
                );
            }
            tracing::info!(stream = %config.name, subjects = ?config.subjects, replicas = config.num_replicas, duplicate_window = ?config.duplicate_window, "nats: stream ready");
            Ok(())
        })
        .await
        .map(|_| ())
}

async fn create_in_background(setup: Weak<StreamSetup>, js: jetstream::Context, max: Duration) {
    let mut wait = Duration::from_millis(100);
    loop {
        let Some(s) = setup.upgrade() else { return };
        match ensure_stream(&s, &js).await {
            Ok(()) => return,
            Err(e) => tracing::debug!(error = %e, "nats: stream not ready yet"),
        }
        drop(s);
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(max.max(Duration::from_millis(100)));
    }
}

impl Upstream for NatsUpstream {
    fn deliver(&self, records: Arc<[Record]>) -> UpstreamFuture {
        let client = self.client.clone();
        let js = self.js.clone();
        let stream = self.stream.clone();
        let messages: Vec<(String, String)> = records
            .iter()
            .map(|r| (self.subject(r), delivery_id(r)))
            .collect();
        Box::pin(async move {
            if client.connection_state() != State::Connected {
                return Err(UpstreamError::transient("nats: not connected"));
            }
            if let Some(setup) = &stream {
                ensure_stream(setup, &js).await?;
            }
            // Pipelined: every publish goes out before the first ack is awaited.
            let mut acks = Vec::with_capacity(records.len());
            for (record, (subject, id)) in records.iter().zip(messages) {
                let line = record.line.strip_suffix(b"\n").unwrap_or(&record.line);
                let publish = PublishMessage::build()
                    .payload(bytes::Bytes::copy_from_slice(line))
                    .message_id(id);
                acks.push(js.send_publish(subject, publish).await);
            }
            let answers = join_all(acks.into_iter().map(|sent| async move {
                match sent {
                    Ok(ack) => ack.await,
                    Err(e) => Err(e),
                }
            }))
            .await;
            let mut failed = None;
            let verdicts: Vec<Verdict> = answers
                .into_iter()
                .map(|answer| match answer {
                    Ok(ack) if ack.duplicate => Verdict::Duplicate,
                    Ok(_) => Verdict::Acked,
                    // Too large for this server: it never will fit.
                    Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
                        Verdict::Rejected(format!("nats: {e}"))
                    }
                    Err(e) if e.kind() == PublishErrorKind::StreamNotFound => {
                        failed.get_or_insert_with(|| {
                            "nats: no stream answered (missing, or electing a leader)".into()
                        });
                        Verdict::Retry
                    }
                    Err(e) => {
                        failed.get_or_insert_with(|| format!("nats: {e}"));
                        Verdict::Retry
                    }
                })
                .collect();
            match failed {
                // Nothing got through: report the call as failed.
                Some(e) if verdicts.iter().all(|v| *v == Verdict::Retry) => {
                    Err(UpstreamError::transient(e))
                }
                _ => Ok(verdicts),
            }
        })
    }

    /// The client connects (and reconnects) by itself: connected is there.
    fn probe(&self) -> Option<ProbeFuture> {
        let state = self.client.connection_state();
        Some(Box::pin(async move {
            match state {
                State::Connected => Ok(()),
                other => Err(format!("nats: {other:?}")),
            }
        }))
    }
}

/// Decodes `%XX` escapes of URL user info.
fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_list_is_one_sink_and_every_password_is_redacted() {
        use crate::sink::{SinkSpec, SinkSpecs};
        let specs: SinkSpecs = "jsonl,nats=nats://u:p1@a:4222,nats://u:p2@b:4222,stderr"
            .parse()
            .unwrap();
        assert_eq!(
            specs.0,
            [
                SinkSpec::Jsonl(None),
                SinkSpec::Forward(
                    "nats".into(),
                    "nats://u:p1@a:4222,nats://u:p2@b:4222".into()
                ),
                SinkSpec::Stderr,
            ]
        );
        let shown = specs.to_string();
        assert_eq!(
            shown,
            "jsonl,nats=nats://u:REDACTED@a:4222,nats://u:REDACTED@b:4222,stderr"
        );
        assert!("jsonl,bogus".parse::<SinkSpecs>().is_err());
        assert!("grpc=127.0.0.1:1,nats://x:1".parse::<SinkSpecs>().is_err());
    }

    #[test]
    fn user_info_is_decoded() {
        assert_eq!(percent_decode("p%40ss%2"), "p@ss%2");
    }
}
