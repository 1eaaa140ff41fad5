//! Hostile clients for `scripts/bench_hostile`: every misbehaviour that
//! meterd bounds, at once, against a meterd in another process, for a
//! while. Prints one JSON line of what each attacker did and what it got.
//!
//! ```sh
//! cargo run --release --example hostile -- --addr 127.0.0.1:50051 --duration 60s
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes};
use clap::Parser;
use meterd::pb::ledger_service_client::LedgerServiceClient;
use meterd::pb::{self, Granularity, Kind};
use prost::Message as _;
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;
use tonic::transport::Channel;

#[derive(Parser)]
#[command(about = "hostile meterd clients (scripts/bench_hostile)")]
struct Cli {
    #[arg(long, default_value = "127.0.0.1:50051")]
    addr: SocketAddr,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    duration: Duration,
    /// Tail followers that read one response and stop.
    #[arg(long, default_value_t = 40)]
    followers: usize,
    /// Callers of a Usage by the hour over ten years, over and over.
    #[arg(long, default_value_t = 8)]
    usage_callers: usize,
    /// SubmitBatch/EmitBatch streams declaring a 2.5 MB message they never finish.
    #[arg(long, default_value_t = 200)]
    big_writers: usize,
    /// Connections that never send the HTTP/2 preface.
    #[arg(long, default_value_t = 200)]
    silent: usize,
    /// Undecodable Emit calls per second.
    #[arg(long, default_value_t = 100)]
    garbage_per_s: u64,
    /// VMs started in 2016 and still running, which the Usage callers bill.
    #[arg(long, default_value_t = 10)]
    decade_vms: usize,
}

fn ts(s: &str) -> Res<prost_types::Timestamp> {
    let t: jiff::Timestamp = s.parse()?;
    Ok(prost_types::Timestamp {
        seconds: t.as_second(),
        nanos: t.subsec_nanosecond(),
    })
}

/// The VMs the Usage callers bill: 87,672 hourly rows each.
async fn decade_vms(addr: SocketAddr, n: usize) -> Res<()> {
    let mut client = pb::metering_service_client::MeteringServiceClient::new(channel(addr).await?);
    for i in 0..n {
        client
            .emit(pb::EmitRequest {
                entry: Some(pb::Entry {
                    kind: Kind::VmComputeStart as i32,
                    vm_id: format!("vm-decade-{i}"),
                    id: format!("decade-{i}"),
                    hypervisor: "cloud-hypervisor".into(),
                    shape: Some(pb::Shape {
                        cpu: 2,
                        mem_bytes: 1 << 30,
                        storage_bytes: 0,
                    }),
                    emitted_at: Some(ts("2016-01-01T00:00:00Z")?),
                    ..Default::default()
                }),
            })
            .await?;
    }
    Ok(())
}

#[derive(Default)]
struct Counts {
    followers: AtomicU64,
    usage_ok: AtomicU64,
    usage_refused: AtomicU64,
    usage_other: AtomicU64,
    big_refused: AtomicU64,
    big_other: AtomicU64,
    silent_closed: AtomicU64,
    garbage_invalid: AtomicU64,
    garbage_other: AtomicU64,
}

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

async fn channel(addr: SocketAddr) -> Res<Channel> {
    Ok(Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?)
}

/// A follower of the entries stream from its start, on its own connection,
/// that reads one response and then nothing.
async fn follower(addr: SocketAddr, counts: Arc<Counts>, until: Instant) -> Res<()> {
    let mut reader = LedgerServiceClient::new(channel(addr).await?);
    let mut stream = reader
        .tail(pb::TailRequest {
            stream: pb::Stream::Entries as i32,
            follow: true,
            ..Default::default()
        })
        .await?
        .into_inner();
    stream.message().await?;
    counts.followers.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep_until(until.into()).await;
    drop(stream);
    Ok(())
}

async fn usage_caller(addr: SocketAddr, counts: Arc<Counts>, until: Instant) -> Res<()> {
    let mut reader = LedgerServiceClient::new(channel(addr).await?);
    let req = pb::UsageRequest {
        start_time: Some(ts("2016-01-01T00:00:00Z")?),
        end_time: Some(ts("2026-01-01T00:00:00Z")?),
        granularity: Granularity::Hour as i32,
        ..Default::default()
    };
    while Instant::now() < until {
        let got = async {
            let mut s = reader.usage(req.clone()).await?.into_inner();
            while s.message().await?.is_some() {}
            Ok::<_, tonic::Status>(())
        }
        .await;
        match got {
            Ok(()) => counts.usage_ok.fetch_add(1, Ordering::Relaxed),
            Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                counts.usage_refused.fetch_add(1, Ordering::Relaxed)
            }
            Err(_) => counts.usage_other.fetch_add(1, Ordering::Relaxed),
        };
    }
    Ok(())
}

/// Declares a 2.5 MB message and sends all of it but the last byte, as
/// fast as flow control lets it, on a connection of its own; again when
/// the server refuses it.
async fn big_writer(addr: SocketAddr, i: usize, counts: Arc<Counts>, until: Instant) -> Res<()> {
    const LEN: u32 = 2_500_000;
    let method = if i.is_multiple_of(2) {
        "SubmitBatch"
    } else {
        "EmitBatch"
    };
    while Instant::now() < until {
        let tcp = TcpStream::connect(addr).await?;
        let (client, connection) = h2::client::handshake(tcp).await?;
        tokio::spawn(connection);
        let mut client = client.ready().await?;
        let request = http::Request::builder()
            .method("POST")
            .uri(format!(
                "http://{addr}/metering.v1.MeteringService/{method}"
            ))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())?;
        let (response, mut send) = client.send_request(request, false)?;
        let sender = tokio::spawn(async move {
            let mut header = vec![0u8];
            header.extend_from_slice(&LEN.to_be_bytes());
            let mut pending = Bytes::from(header);
            let mut left = u64::from(LEN) - 1;
            loop {
                while !pending.is_empty() {
                    send.reserve_capacity(pending.len());
                    let Some(Ok(n)) = std::future::poll_fn(|cx| send.poll_capacity(cx)).await
                    else {
                        return;
                    };
                    let chunk = pending.split_to(n.min(pending.len()));
                    if send.send_data(chunk, false).is_err() {
                        return;
                    }
                }
                if left == 0 {
                    std::future::pending::<()>().await;
                }
                let n = left.min(16 * 1024);
                left -= n;
                pending = Bytes::from(vec![0u8; n as usize]);
            }
        });
        let answered =
            tokio::time::timeout(until.saturating_duration_since(Instant::now()), async {
                let response = response.await?;
                let mut status = response.headers().get("grpc-status").cloned();
                let mut body = response.into_body();
                while let Some(d) = body.data().await {
                    d?;
                }
                if status.is_none() {
                    status = body
                        .trailers()
                        .await?
                        .and_then(|t| t.get("grpc-status").cloned());
                }
                Ok::<_, h2::Error>(status)
            })
            .await;
        sender.abort();
        match answered {
            Ok(Ok(Some(s))) if s == "8" => counts.big_refused.fetch_add(1, Ordering::Relaxed),
            Ok(_) => counts.big_other.fetch_add(1, Ordering::Relaxed),
            Err(_) => break, // the run is over
        };
    }
    Ok(())
}

/// A TCP connection that sends nothing; again when the server closes it.
async fn silent(addr: SocketAddr, counts: Arc<Counts>, until: Instant) -> Res<()> {
    while Instant::now() < until {
        let mut tcp = TcpStream::connect(addr).await?;
        let mut buf = Vec::new();
        let left = until.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left, tcp.read_to_end(&mut buf))
            .await
            .is_ok()
        {
            counts.silent_closed.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// Emit calls whose vm_id is not UTF-8, at a steady rate.
async fn garbage(addr: SocketAddr, per_s: u64, counts: Arc<Counts>, until: Instant) -> Res<()> {
    let mut grpc = tonic::client::Grpc::new(channel(addr).await?);
    let mut body = pb::EmitRequest {
        entry: Some(pb::Entry {
            kind: Kind::VmComputeStart as i32,
            vm_id: "vm-garbageX".into(),
            ..Default::default()
        }),
    }
    .encode_to_vec();
    if let Some(at) = body.windows(11).position(|w| w == b"vm-garbageX") {
        body[at + 10] = 0xff;
    }
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / per_s.max(1)));
    while Instant::now() < until {
        tick.tick().await;
        grpc.ready().await?;
        let path = "/metering.v1.MeteringService/Emit".parse()?;
        let r = grpc
            .unary::<_, pb::EmitResponse, _>(tonic::Request::new(body.clone()), path, Raw)
            .await;
        match r {
            Err(s) if s.code() == tonic::Code::InvalidArgument => {
                counts.garbage_invalid.fetch_add(1, Ordering::Relaxed)
            }
            _ => counts.garbage_other.fetch_add(1, Ordering::Relaxed),
        };
    }
    Ok(())
}

/// Sends the bytes given; decodes answers with prost.
#[derive(Clone, Copy)]
struct Raw;
struct RawEncoder;
struct RawDecoder<U>(std::marker::PhantomData<U>);

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        buf: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl<U: prost::Message + Default> tonic::codec::Decoder for RawDecoder<U> {
    type Item = U;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        buf: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<U>, tonic::Status> {
        U::decode(buf)
            .map(Some)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

impl tonic::codec::Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = pb::EmitResponse;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder<pb::EmitResponse>;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawDecoder(std::marker::PhantomData)
    }
}

#[tokio::main]
async fn main() -> Res<()> {
    let cli = Cli::parse();
    decade_vms(cli.addr, cli.decade_vms).await?;
    let counts = Arc::new(Counts::default());
    let until = Instant::now() + cli.duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..cli.followers {
        tasks.spawn(follower(cli.addr, counts.clone(), until));
    }
    for _ in 0..cli.usage_callers {
        tasks.spawn(usage_caller(cli.addr, counts.clone(), until));
    }
    for i in 0..cli.big_writers {
        tasks.spawn(big_writer(cli.addr, i, counts.clone(), until));
    }
    for _ in 0..cli.silent {
        tasks.spawn(silent(cli.addr, counts.clone(), until));
    }
    tasks.spawn(garbage(cli.addr, cli.garbage_per_s, counts.clone(), until));
    let mut errors = 0u64;
    let mut first_error = None;
    while let Some(r) = tasks.join_next().await {
        if let Ok(Err(e)) = r {
            errors += 1;
            first_error.get_or_insert_with(|| e.to_string());
        }
    }
    let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
    println!(
        "{}",
        serde_json::json!({
            "seconds": cli.duration.as_secs_f64(),
            "followers_stalled": c(&counts.followers),
            "usage_ok": c(&counts.usage_ok),
            "usage_refused": c(&counts.usage_refused),
            "usage_other": c(&counts.usage_other),
            "big_writers_refused": c(&counts.big_refused),
            "big_writers_other": c(&counts.big_other),
            "silent_closed": c(&counts.silent_closed),
            "garbage_invalid_argument": c(&counts.garbage_invalid),
            "garbage_other": c(&counts.garbage_other),
            "attacker_errors": errors,
            "first_attacker_error": first_error,
        })
    );
    Ok(())
}
