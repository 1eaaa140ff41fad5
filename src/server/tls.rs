//! TLS for TCP listeners (rustls): certificate and key from PEM files,
//! optional client-certificate verification (mutual TLS), reloading on
//! SIGHUP without dropping the server or open connections, and a cap on
//! handshakes in progress.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;

use super::conn::{Conn, Limits};

/// Finished handshakes waiting for the HTTP/2 server to pick them up.
const ACCEPTED_QUEUE: usize = 64;

/// Where the PEM files are.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by this CA.
    pub client_ca: Option<PathBuf>,
}

/// The current TLS configuration; [`Tls::reload`] swaps it for new
/// connections while existing ones keep theirs. Safe for concurrent use.
pub struct Tls {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
}

impl Tls {
    /// Loads and checks the files.
    pub fn load(files: TlsFiles) -> Result<Tls, String> {
        let config = build(&files)?;
        Ok(Tls {
            files,
            current: RwLock::new(Arc::new(config)),
        })
    }

    /// Re-reads the files; on error the previous configuration stays.
    pub fn reload(&self) -> Result<(), String> {
        let config = Arc::new(build(&self.files)?);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = config;
        Ok(())
    }

    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }

    /// Accepts TCP connections and yields those whose handshake succeeds.
    /// Handshakes run concurrently, each bounded by a timeout, at most as
    /// many at once as `handshakes` allows.
    pub(crate) fn incoming(
        self: Arc<Self>,
        listener: TcpListener,
        handshakes: Arc<Handshakes>,
        limits: Arc<Limits>,
    ) -> ReceiverStream<io::Result<Conn<TlsStream<TcpStream>>>> {
        let (tx, rx) = mpsc::channel(ACCEPTED_QUEUE);
        tokio::spawn(async move {
            let name = listener
                .local_addr()
                .map_or_else(|_| "tls".into(), |a| a.to_string());
            let mut backoff = super::accept::Backoff::new(name);
            loop {
                let (stream, peer) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            backoff.failed(&e).await;
                            continue;
                        }
                    },
                    () = backoff.quiet() => {
                        backoff.recovered();
                        continue;
                    }
                    () = tx.closed() => return,
                };
                // At the cap the connection is closed (dropped) at once.
                let Some(slot) = limits.admit() else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let limits = limits.clone();
                let acceptor = self.acceptor();
                let tx = tx.clone();
                let slots = handshakes.clone();
                handshakes.start(move |id| async move {
                    let shaken =
                        tokio::time::timeout(limits.handshake_timeout(), acceptor.accept(stream))
                            .await;
                    // Finished: no longer a handshake in progress, whatever
                    // the HTTP/2 server then makes of the connection.
                    slots.done(id);
                    match shaken {
                        Ok(Ok(tls)) => {
                            let _ = tx.send(Ok(Conn::new(tls, slot, &limits))).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        ReceiverStream::new(rx)
    }
}

/// Handshakes in progress on every TLS listener, oldest first, at most
/// `max`. Each holds a socket and rustls state, so without a cap peers that
/// connect and never finish (slow or malicious) could exhaust memory and
/// file descriptors for the `--handshake-timeout` each. At the cap, the
/// oldest handshake is dropped rather than the new connection refused: a
/// client that completes its handshake in milliseconds still gets through
/// a flood of stalled ones, and the flood cannot hold more than `max`.
/// Safe for concurrent use.
pub(crate) struct Handshakes {
    max: usize,
    /// By start order (ids only grow).
    pending: Mutex<(u64, BTreeMap<u64, AbortHandle>)>,
}

impl Handshakes {
    pub(crate) fn new(max: usize) -> Arc<Handshakes> {
        Arc::new(Handshakes {
            max: max.max(1),
            pending: Mutex::new((0, BTreeMap::new())),
        })
    }

    /// Spawns a handshake task, first dropping the oldest one at the cap.
    fn start<F, Fut>(&self, task: F)
    where
        F: FnOnce(u64) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        // Logged once per episode, with counts (see quiet.rs).
        static FULL: super::quiet::Quiet = super::quiet::Quiet::new("TLS handshakes at the cap");
        // Held while spawning, so that the task's `done` (which locks too)
        // always finds its entry.
        let mut guard = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let (next, pending) = &mut *guard;
        if pending.len() >= self.max {
            if let Some((_, oldest)) = pending.pop_first() {
                oldest.abort();
                FULL.refused(&format_args!(
                    "{} handshakes in progress (--max-tls-handshakes); dropping the oldest",
                    self.max
                ));
            }
        } else {
            FULL.accepted();
        }
        let id = *next;
        *next += 1;
        let handle = tokio::spawn(task(id));
        pending.insert(id, handle.abort_handle());
    }

    fn done(&self, id: u64) {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .1
            .remove(&id);
    }
}

fn build(files: &TlsFiles) -> Result<ServerConfig, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|i| i.collect())
        .map_err(|e| format!("--tls-cert {}: {e}", files.cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "--tls-cert {}: no certificate found",
            files.cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("--tls-key {}: {e}", files.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            let ca_certs = CertificateDer::pem_file_iter(ca)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("--tls-client-ca {}: {e}", ca.display()))?;
            for c in ca_certs {
                roots
                    .add(c)
                    .map_err(|e| format!("--tls-client-ca {}: {e}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("--tls-client-ca {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("--tls-cert/--tls-key: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}
