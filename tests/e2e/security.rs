//! TLS (with SIGHUP reload and mutual TLS) and bearer tokens, against the
//! real binary. Certificates are generated here; no key is committed.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use meterd::pb::metering_service_client::MeteringServiceClient;
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::Code;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::common::{emit_req, entries, free_port, meterd_bin, vm_entry, Binary};

/// A CA and its PEM certificate.
pub(crate) struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub(crate) pem: String,
}

pub(crate) fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let cert = params.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

/// (certificate PEM, key PEM) for `localhost` / 127.0.0.1, signed by `ca`.
fn leaf(ca: &Ca, client: bool) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    params.extended_key_usages = vec![if client {
        ExtendedKeyUsagePurpose::ClientAuth
    } else {
        ExtendedKeyUsagePurpose::ServerAuth
    }];
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

pub(crate) fn write_server_cert(dir: &Path, ca: &Ca) {
    let (cert, key) = leaf(ca, false);
    std::fs::write(dir.join("server.pem"), cert).unwrap();
    std::fs::write(dir.join("server.key"), key).unwrap();
}

async fn tls_channel(
    port: u16,
    trust: &Ca,
    identity: Option<&(String, String)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&trust.pem))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Channel::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

/// Starts meterd with TLS on its TCP port and waits until a client that
/// trusts `ca` gets through.
pub(crate) async fn tls_server(dir: &Path, ca: &Ca, extra: &[&str]) -> (Binary, u16) {
    let cert = dir.join("server.pem").display().to_string();
    let key = dir.join("server.key").display().to_string();
    let mut args = vec!["--tls-cert", cert.as_str(), "--tls-key", key.as_str()];
    args.extend_from_slice(extra);
    let mut server = Binary::spawn(&dir.join("ledger"), &args);
    let port = server.addr.port();
    for _ in 0..500 {
        if let Ok(Some(status)) = server.child.try_wait() {
            panic!("meterd exited early: {status}");
        }
        let connected = match extra.first() {
            // Mutual TLS: the probe needs no client certificate to complete
            // TCP, but the handshake does; a refused probe still proves the
            // server is up.
            Some(&"--tls-client-ca") => tokio::net::TcpStream::connect(server.addr).await.is_ok(),
            _ => tls_channel(port, ca, None).await.is_ok(),
        };
        if connected {
            return (server, port);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("TLS server did not come up");
}

#[tokio::test]
async fn tls_serves_trusting_clients_refuses_plaintext_and_reloads_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let (ca_a, ca_b) = (ca("ca-a"), ca("ca-b"));
    write_server_cert(dir.path(), &ca_a);
    let (server, port) = tls_server(dir.path(), &ca_a, &[]).await;

    let channel = tls_channel(port, &ca_a, None).await.expect("TLS connect");
    let mut client = MeteringServiceClient::new(channel);
    client
        .emit(emit_req(vm_entry("vm-tls", "t1")))
        .await
        .expect("emit over TLS");

    // Plaintext to the TLS port fails.
    let plain = Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await;
    if let Ok(ch) = plain {
        let err = MeteringServiceClient::new(ch)
            .emit(emit_req(vm_entry("vm-x", "p")))
            .await;
        assert!(err.is_err(), "plaintext call on a TLS port must fail");
    }

    // Swap the certificate for one from another CA, then SIGHUP.
    write_server_cert(dir.path(), &ca_b);
    Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .unwrap();
    let mut reloaded = false;
    for _ in 0..100 {
        if tls_channel(port, &ca_b, None).await.is_ok() {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        reloaded,
        "the new certificate is served to the next connection"
    );
    assert!(
        tls_channel(port, &ca_a, None).await.is_err(),
        "the old certificate is gone"
    );
    // The connection made before the reload still works.
    client
        .emit(emit_req(vm_entry("vm-tls", "t2")))
        .await
        .expect("old connection kept");
    drop(server);
    assert_eq!(entries(&dir.path().join("ledger")).len(), 2);
}

#[tokio::test]
async fn mutual_tls_refuses_clients_without_a_valid_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (server_ca, client_ca, other_ca) = (ca("server-ca"), ca("client-ca"), ca("other"));
    write_server_cert(dir.path(), &server_ca);
    std::fs::write(dir.path().join("client-ca.pem"), &client_ca.pem).unwrap();
    let client_ca_path = dir.path().join("client-ca.pem").display().to_string();
    let (server, port) = tls_server(
        dir.path(),
        &server_ca,
        &["--tls-client-ca", &client_ca_path],
    )
    .await;

    let good = leaf(&client_ca, true);
    let ch = tls_channel(port, &server_ca, Some(&good))
        .await
        .expect("client with a valid certificate");
    MeteringServiceClient::new(ch)
        .emit(emit_req(vm_entry("vm-m", "m1")))
        .await
        .expect("accepted");

    for (name, identity) in [
        ("no certificate", None),
        ("certificate from another CA", Some(leaf(&other_ca, true))),
    ] {
        let refused = match tls_channel(port, &server_ca, identity.as_ref()).await {
            Err(_) => true,
            Ok(ch) => MeteringServiceClient::new(ch)
                .emit(emit_req(vm_entry("vm-m", "bad")))
                .await
                .is_err(),
        };
        assert!(refused, "{name} must be refused");
    }
    drop(server);
    assert_eq!(entries(&dir.path().join("ledger")).len(), 1);
}

fn with_token<T>(msg: T, token: Option<&str>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    req
}

#[tokio::test]
async fn bearer_tokens_guard_writes_but_not_health_or_reflection() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "# operators\nsecret-one\n\nsecret-two\n").unwrap();
    let tokens_arg = tokens.display().to_string();
    let server = Binary::start(
        &dir.path().join("ledger"),
        &["--auth-token-file", &tokens_arg],
    )
    .await;
    let mut client = server.client().await;

    for (what, token) in [("no token", None), ("a wrong token", Some("secret-three"))] {
        let status = client
            .emit(with_token(emit_req(vm_entry("vm-1", "x")), token))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{what}");
        assert!(
            !status.message().contains("secret"),
            "the token is not echoed: {}",
            status.message()
        );
    }
    let batch = meterd::pb::SubmitBatchRequest::new(vec![crate::common::batch("b", "m")]);
    let status = client
        .submit_batch(with_token(tokio_stream::iter(vec![batch]), None))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(
        entries(&server.ledger).is_empty(),
        "nothing written without a valid token"
    );

    client
        .emit(with_token(
            emit_req(vm_entry("vm-1", "ok-1")),
            Some("secret-one"),
        ))
        .await
        .expect("first token");
    client
        .emit(with_token(
            emit_req(vm_entry("vm-1", "ok-2")),
            Some("secret-two"),
        ))
        .await
        .expect("second token");
    let mut health = HealthClient::new(crate::common::channel(server.addr).await);
    health
        .check(HealthCheckRequest::default())
        .await
        .expect("health needs no token");

    // Tokens are re-read on SIGHUP.
    std::fs::write(&tokens, "secret-three\n").unwrap();
    Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .unwrap();
    let mut rotated = false;
    for _ in 0..100 {
        if client
            .emit(with_token(
                emit_req(vm_entry("vm-1", "ok-3")),
                Some("secret-three"),
            ))
            .await
            .is_ok()
        {
            rotated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(rotated, "new token accepted after SIGHUP");
    let status = client
        .emit(with_token(
            emit_req(vm_entry("vm-1", "no")),
            Some("secret-one"),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "old token revoked");

    // `meterd emit --token`.
    let addr = server.addr.to_string();
    let out = Command::new(meterd_bin())
        .args([
            "emit",
            "--addr",
            &addr,
            "--kind",
            "vm.compute.start",
            "--vm-id",
            "vm-cli",
            "--token",
            "secret-three",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(meterd_bin())
        .args([
            "emit",
            "--addr",
            &addr,
            "--kind",
            "vm.compute.start",
            "--vm-id",
            "vm-cli",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing bearer token"));
    assert_eq!(entries(&server.ledger).len(), 4);
}

#[tokio::test]
async fn auth_all_services_guards_health_too() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "t0ken\n").unwrap();
    let tokens_arg = tokens.display().to_string();
    let sock = dir.path().join("s.sock");
    let sock_arg = format!("unix:{}", sock.display());
    // Binary::start probes health without a token, so start by hand.
    let port = free_port();
    let child = Command::new(meterd_bin())
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--listen",
            &sock_arg,
            "--auth-token-file",
            &tokens_arg,
            "--auth-all-services",
            "--ledger",
        ])
        .arg(dir.path().join("ledger"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Killed however the test ends (a failed assertion too).
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let child = KillOnDrop(child);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut answered = None;
    for _ in 0..200 {
        if let Ok(ch) = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
        {
            let mut h = HealthClient::new(ch);
            answered = Some(
                h.check(with_token(HealthCheckRequest::default(), None))
                    .await
                    .map(|_| ()),
            );
            let ok = h
                .check(with_token(HealthCheckRequest::default(), Some("t0ken")))
                .await;
            assert!(ok.is_ok(), "with the token: {ok:?}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = answered.expect("server up").unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    // The scheme is case-insensitive (RFC 7235); spaces after it are one.
    let ch = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut h = HealthClient::new(ch);
    for value in ["BEARER t0ken", "bearer t0ken", "Bearer   t0ken"] {
        let mut req = tonic::Request::new(HealthCheckRequest::default());
        req.metadata_mut()
            .insert("authorization", value.parse().unwrap());
        assert!(h.check(req).await.is_ok(), "{value}");
    }
    for value in ["Basic t0ken", "Bearer", "Bearert0ken", "Bearer wrong"] {
        let mut req = tonic::Request::new(HealthCheckRequest::default());
        req.metadata_mut()
            .insert("authorization", value.parse().unwrap());
        let e = h.check(req).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{value}");
    }

    // `meterd health` probes such a server with a token from a file or
    // METERD_TOKEN, and fails precisely without one.
    let health = |extra: &[&str], env: Option<&str>| {
        let mut cmd = Command::new(meterd_bin());
        cmd.args(["health", "--addr", &format!("127.0.0.1:{port}")])
            .args(extra)
            .env_remove("METERD_TOKEN");
        if let Some(t) = env {
            cmd.env("METERD_TOKEN", t);
        }
        cmd.output().unwrap()
    };
    let out = health(&[], None);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("missing bearer token"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token_file = dir.path().join("health-token");
    std::fs::write(&token_file, "t0ken\n").unwrap();
    let out = health(&["--token-file", token_file.to_str().unwrap()], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "SERVING");
    let out = health(&[], Some("t0ken"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = health(&[], Some("wrong"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid bearer token"));
    let empty = dir.path().join("empty-token");
    std::fs::write(&empty, "\n").unwrap();
    let out = health(&["--token-file", empty.to_str().unwrap()], None);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--token-file")
            && String::from_utf8_lossy(&out.stderr).contains("the first line is empty"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(child);
}

/// Open file descriptors of a process.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Connections that never finish their TLS handshake hold at most
/// `--max-tls-handshakes` sockets, and a client that does finish its
/// handshake gets through while they keep coming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_tls_handshakes_are_capped_and_do_not_lock_out_clients() {
    let dir = tempfile::tempdir().unwrap();
    let ca_a = ca("ca-cap");
    write_server_cert(dir.path(), &ca_a);
    let (server, port) = tls_server(dir.path(), &ca_a, &["--max-tls-handshakes", "16"]).await;
    let pid = server.child.id();
    let baseline = open_fds(pid);

    // 200 peers connect and never send a ClientHello.
    let mut stalled = Vec::new();
    for _ in 0..200 {
        stalled.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    }
    // The server has accepted them all (each was either dropped or is
    // waiting for its handshake): a well-behaved client gets through now.
    let start = std::time::Instant::now();
    let channel = tls_channel(port, &ca_a, None)
        .await
        .expect("a client that finishes its handshake gets through");
    MeteringServiceClient::new(channel)
        .emit(emit_req(vm_entry("vm-cap", "cap-1")))
        .await
        .expect("emit over TLS");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "the client waited {:?}",
        start.elapsed()
    );
    let held = open_fds(pid);
    assert!(
        held <= baseline + 16 + 8,
        "{held} open descriptors with 200 stalled handshakes (baseline {baseline}, cap 16)"
    );
    assert!(
        server.log_text().contains("TLS handshakes at the cap"),
        "{}",
        server.log_text()
    );
    drop(stalled);
}
