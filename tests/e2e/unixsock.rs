//! `:authority` on Unix sockets and TCP, with hand-made HTTP/2 frames
//! (issue 9, item 0).
//!
//! gRPC clients on a Unix socket send the socket path, or its %-encoding, as
//! `:authority`. The Unix socket must serve such requests; TCP listeners
//! (plaintext and TLS) must still reset them with PROTOCOL_ERROR. The stock
//! clients are in python.rs and grpcurl.rs; here the exact bytes are chosen,
//! which no HTTP/2 client library lets one do (an `http::Uri` cannot even
//! hold such an authority).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use crate::common::Binary;
use crate::security::{ca, tls_server, write_server_cert};

const PROTOCOL_ERROR: u32 = 0x1;

// Frame types and flags (RFC 9113, section 6).
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;

/// How the server answered one request.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// The stream ended normally; the response's DATA payload.
    Served(Vec<u8>),
    /// RST_STREAM on the request's stream, with its error code.
    Reset(u32),
    /// GOAWAY, with its error code.
    GoAway(u32),
}

/// An empty HealthCheckRequest answered SERVING: the gRPC message prefix
/// (not compressed, length 2), then field 1 = 1.
const SERVING: &[u8] = &[0, 0, 0, 0, 2, 0x08, 0x01];

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("small frame");
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend([kind, flags]);
    out.extend(stream.to_be_bytes());
    out.extend(payload);
    out
}

/// An HPACK integer with an N-bit prefix (RFC 7541, section 5.1).
fn hpack_int(out: &mut Vec<u8>, first: u8, prefix_bits: u32, mut n: usize) {
    let max = (1 << prefix_bits) - 1;
    if n < max {
        out.push(first | n as u8);
        return;
    }
    out.push(first | max as u8);
    n -= max;
    while n >= 128 {
        out.push((n % 128) as u8 | 0x80);
        n /= 128;
    }
    out.push(n as u8);
}

/// An HPACK string literal, not Huffman-coded.
fn hpack_str(out: &mut Vec<u8>, s: &[u8]) {
    hpack_int(out, 0, 7, s.len());
    out.extend(s);
}

/// A "literal header field without indexing" whose name is the static
/// table's entry `index`, so that the server's dynamic table stays empty.
fn hpack_literal(out: &mut Vec<u8>, index: usize, value: &[u8]) {
    hpack_int(out, 0, 4, index);
    hpack_str(out, value);
}

/// The header block of `POST /grpc.health.v1.Health/Check` with the given
/// `:authority`.
fn health_check_headers(authority: &[u8]) -> Vec<u8> {
    let mut block = vec![0x83, 0x86]; // :method POST, :scheme http (static 3, 6)
    hpack_literal(&mut block, 4, b"/grpc.health.v1.Health/Check"); // :path
    hpack_literal(&mut block, 1, authority); // :authority
    hpack_literal(&mut block, 31, b"application/grpc"); // content-type
    block.push(0x00); // te: trailers (a new name)
    hpack_str(&mut block, b"te");
    hpack_str(&mut block, b"trailers");
    block
}

/// Sends one health check with `authority` on a fresh connection and reads
/// frames until its stream ends, is reset, or the connection goes away.
async fn health_check(mut io: impl AsyncRead + AsyncWrite + Unpin, authority: &[u8]) -> Answer {
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    out.extend(frame(
        HEADERS,
        END_HEADERS,
        1,
        &health_check_headers(authority),
    ));
    out.extend(frame(DATA, END_STREAM, 1, &[0, 0, 0, 0, 0]));
    io.write_all(&out).await.expect("send request");

    let read = async {
        let mut data = Vec::new();
        loop {
            let mut head = [0u8; 9];
            io.read_exact(&mut head)
                .await
                .expect("the server closed the connection without an answer");
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let (kind, flags) = (head[3], head[4]);
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            let mut payload = vec![0u8; len];
            io.read_exact(&mut payload).await.expect("read a frame");
            match (kind, stream) {
                (SETTINGS, 0) if flags & ACK == 0 => {
                    io.write_all(&frame(SETTINGS, ACK, 0, &[]))
                        .await
                        .expect("ack settings");
                }
                (GOAWAY, 0) => {
                    let code = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
                    return Answer::GoAway(code);
                }
                (RST_STREAM, 1) => {
                    return Answer::Reset(u32::from_be_bytes([
                        payload[0], payload[1], payload[2], payload[3],
                    ]));
                }
                (DATA, 1) => {
                    let body = if flags & PADDED != 0 {
                        let pad = usize::from(payload[0]);
                        &payload[1..payload.len() - pad]
                    } else {
                        &payload[..]
                    };
                    data.extend_from_slice(body);
                    if flags & END_STREAM != 0 {
                        return Answer::Served(data);
                    }
                }
                (HEADERS, 1) if flags & END_STREAM != 0 => return Answer::Served(data),
                _ => {}
            }
        }
    };
    // A guard against a hang, not a verdict: every outcome is an event.
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("no answer within 10 s")
}

/// The %-encoding grpcio sends for a Unix socket path.
fn percent_encoded(path: &str) -> String {
    path.replace('/', "%2F")
}

#[tokio::test]
async fn unix_socket_accepts_a_path_authority_and_tcp_refuses_it() {
    let dir = tempfile::tempdir().unwrap();
    let run = tempfile::tempdir().unwrap();
    let sock = run.path().join("meterd.sock");
    // Ready once TCP health answers: every listener is bound before serving.
    let bin = Binary::start(
        dir.path(),
        &["--listen", &format!("unix:{}", sock.display())],
    )
    .await;
    let path = sock.to_str().expect("a UTF-8 temporary path");
    let encoded = percent_encoded(path);
    let encoded_relative = percent_encoded(path.trim_start_matches('/'));

    // Valid authorities work on both.
    for authority in ["localhost", "127.0.0.1:50051"] {
        let tcp = TcpStream::connect(bin.addr).await.unwrap();
        assert_eq!(
            health_check(tcp, authority.as_bytes()).await,
            Answer::Served(SERVING.to_vec()),
            "TCP, :authority {authority:?}"
        );
        let unix = UnixStream::connect(&sock).await.unwrap();
        assert_eq!(
            health_check(unix, authority.as_bytes()).await,
            Answer::Served(SERVING.to_vec()),
            "Unix socket, :authority {authority:?}"
        );
    }

    // What grpcurl and grpc-java send (the path), and grpcio (%-encoded).
    for authority in [path, &encoded, &encoded_relative] {
        let unix = UnixStream::connect(&sock).await.unwrap();
        assert_eq!(
            health_check(unix, authority.as_bytes()).await,
            Answer::Served(SERVING.to_vec()),
            "Unix socket, :authority {authority:?}"
        );
        let tcp = TcpStream::connect(bin.addr).await.unwrap();
        assert_eq!(
            health_check(tcp, authority.as_bytes()).await,
            Answer::Reset(PROTOCOL_ERROR),
            "TCP, :authority {authority:?}"
        );
    }
}

#[tokio::test]
async fn tls_listener_refuses_a_path_authority() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca("ca-authority");
    write_server_cert(dir.path(), &ca);
    let (bin, _) = tls_server(dir.path(), &ca, &[]).await;

    let connect = || async {
        use rustls::pki_types::pem::PemObject as _;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from_pem_slice(ca.pem.as_bytes()).unwrap())
            .unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let tcp = TcpStream::connect(bin.addr).await.unwrap();
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .expect("TLS handshake")
    };

    assert_eq!(
        health_check(connect().await, b"localhost").await,
        Answer::Served(SERVING.to_vec())
    );
    let path = b"/run/meterd/meterd.sock";
    assert_eq!(
        health_check(connect().await, path).await,
        Answer::Reset(PROTOCOL_ERROR)
    );
}
