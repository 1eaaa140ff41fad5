//! Messages that cannot be decoded (malformed protobuf, invalid UTF-8 in a
//! string field), sent as raw bytes by a real tonic client: the server
//! answers INVALID_ARGUMENT naming what could not be decoded, never
//! INTERNAL; in EmitBatch and SubmitBatch the bad element is rejected at
//! its position and its neighbours are served; and a forwarding meterd
//! dead-letters a record its upstream says it cannot decode instead of
//! retrying it forever.

use std::marker::PhantomData;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut};
use meterd::pb::{self, EmitBatchRequest, SubmitBatchRequest};
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::common::{batch, channel, entries, field_values, vm_entry, Binary};

/// A codec that sends requests as the bytes given and decodes responses
/// as `U`.
struct Raw<U>(PhantomData<U>);

impl<U> Default for Raw<U> {
    fn default() -> Self {
        Raw(PhantomData)
    }
}

struct RawEncoder;
struct TypedDecoder<U>(PhantomData<U>);

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl<U: Message + Default> Decoder for TypedDecoder<U> {
    type Item = U;
    type Error = Status;
    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let bytes = buf.copy_to_bytes(buf.remaining());
        U::decode(bytes)
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }
}

impl<U: Message + Default + Send + 'static> Codec for Raw<U> {
    type Encode = Vec<u8>;
    type Decode = U;
    type Encoder = RawEncoder;
    type Decoder = TypedDecoder<U>;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> TypedDecoder<U> {
        TypedDecoder(PhantomData)
    }
}

async fn unary<U: Message + Default + Send + 'static>(
    ch: Channel,
    method: &str,
    body: Vec<u8>,
) -> Result<U, Status> {
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready().await.expect("ready");
    let path = format!("/metering.v1.MeteringService/{method}")
        .parse()
        .expect("path");
    grpc.unary(tonic::Request::new(body), path, Raw::<U>::default())
        .await
        .map(tonic::Response::into_inner)
}

/// `bytes` with the first occurrence of `marker` changed so that its last
/// byte is 0xff: invalid UTF-8 in whatever string held it.
fn spoil(mut bytes: Vec<u8>, marker: &[u8]) -> Vec<u8> {
    let at = bytes
        .windows(marker.len())
        .position(|w| w == marker)
        .expect("marker in the bytes");
    bytes[at + marker.len() - 1] = 0xff;
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_emits_are_invalid_argument_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let meterd = Binary::start(dir.path(), &[]).await;
    let ch = channel(meterd.addr).await;

    let good = pb::EmitRequest {
        entry: Some(vm_entry("vm-badX", "id-bad")),
    }
    .encode_to_vec();
    let s = unary::<pb::EmitResponse>(ch.clone(), "Emit", spoil(good, b"vm-badX"))
        .await
        .expect_err("invalid UTF-8 must be refused");
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(s.message().contains("Entry.vm_id"), "{}", s.message());
    assert!(s.message().contains("UTF-8"), "{}", s.message());

    // Malformed protobuf: a field whose length runs past the end.
    let s = unary::<pb::EmitResponse>(ch.clone(), "Emit", vec![0x0a, 0x7f, 0x08])
        .await
        .expect_err("malformed protobuf must be refused");
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(
        s.message().contains("could not be decoded"),
        "{}",
        s.message()
    );

    // Nothing was written; the server goes on serving.
    let ok = pb::EmitRequest {
        entry: Some(vm_entry("vm-good", "id-good")),
    }
    .encode_to_vec();
    unary::<pb::EmitResponse>(ch, "Emit", ok)
        .await
        .expect("a good emit after the bad ones");
    assert_eq!(field_values(&entries(dir.path()), "vm_id"), vec!["vm-good"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_undecodable_entry_does_not_harm_its_neighbours_in_emit_batch() {
    let dir = tempfile::tempdir().unwrap();
    let meterd = Binary::start(dir.path(), &[]).await;
    let req = EmitBatchRequest::new(vec![
        vm_entry("vm-1", "e-1"),
        vm_entry("vm-2X", "e-2"),
        vm_entry("vm-3", "e-3"),
    ]);
    let body = spoil(req.encode_to_vec(), b"vm-2X");
    let resp: pb::EmitBatchResponse = unary(channel(meterd.addr).await, "EmitBatch", body)
        .await
        .expect("the call succeeds; the bad entry is rejected on its own");
    assert_eq!(resp.results.len(), 3);
    assert_eq!(resp.results[0].rejected, "");
    assert_eq!(resp.results[2].rejected, "");
    let why = &resp.results[1].rejected;
    assert!(why.starts_with("entries[1]: could not be decoded"), "{why}");
    assert!(why.contains("Entry.vm_id"), "{why}");
    assert!(resp.results[1].emitted_at.is_none());
    assert_eq!(
        field_values(&entries(dir.path()), "vm_id"),
        vec!["vm-1", "vm-3"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_batch_is_rejected_and_the_submit_batch_stream_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let meterd = Binary::start(dir.path(), &[]).await;
    let mut bad = batch("b-badX", "model-a");
    bad.unit_name = "unit/X".into();
    let first = spoil(
        SubmitBatchRequest::new(vec![batch("b-1", "model-a"), bad]).encode_to_vec(),
        b"unit/X",
    );
    let second = SubmitBatchRequest::new(vec![batch("b-2", "model-a")]).encode_to_vec();

    let mut grpc = tonic::client::Grpc::new(channel(meterd.addr).await);
    grpc.ready().await.expect("ready");
    let path = "/metering.v1.MeteringService/SubmitBatch".parse().unwrap();
    let requests = tokio_stream::iter(vec![first, second]);
    let mut responses = grpc
        .streaming(
            tonic::Request::new(requests),
            path,
            Raw::<pb::SubmitBatchResponse>::default(),
        )
        .await
        .expect("stream opens")
        .into_inner();

    let r1 = responses
        .message()
        .await
        .expect("first answer")
        .expect("one");
    assert_eq!(r1.env_responses["model-a"].acks, vec!["b-1"]);
    assert_eq!(r1.rejected.len(), 1, "{r1:?}");
    assert_eq!(r1.rejected[0].index, 1);
    let why = &r1.rejected[0].reason;
    assert!(why.contains("could not be decoded"), "{why}");
    assert!(why.contains("MetricBatch.unit_name"), "{why}");
    // The stream was not ended by the bad batch.
    let r2 = responses
        .message()
        .await
        .expect("second answer")
        .expect("two");
    assert_eq!(r2.env_responses["model-a"].acks, vec!["b-2"]);
    assert!(responses.message().await.expect("clean end").is_none());
    assert_eq!(
        field_values(&crate::common::batches(dir.path()), "uuid"),
        vec!["b-1", "b-2"]
    );
}

/// An upstream that cannot decode one entry (as a meterd of another
/// version might): INVALID_ARGUMENT for every call that holds it.
mod picky {
    use meterd::pb::metering_service_server::MeteringService;
    use meterd::pb::{self, EntryResult};
    use tonic::{Request, Response, Status, Streaming};

    pub struct Upstream;

    #[tonic::async_trait]
    impl MeteringService for Upstream {
        async fn emit(
            &self,
            _: Request<pb::EmitRequest>,
        ) -> Result<Response<pb::EmitResponse>, Status> {
            Err(Status::unimplemented("emit"))
        }

        async fn emit_batch(
            &self,
            req: Request<pb::EmitBatchRequest>,
        ) -> Result<Response<pb::EmitBatchResponse>, Status> {
            let entries = req.into_inner().entries;
            if entries.iter().any(|e| e.vm_id == "vm-poison") {
                return Err(Status::invalid_argument(
                    "the request could not be decoded: EmitBatchRequest.entries: Entry.vm_id: invalid string value: data is not UTF-8 encoded",
                ));
            }
            Ok(Response::new(pb::EmitBatchResponse {
                results: entries
                    .iter()
                    .map(|e| EntryResult {
                        emitted_at: e.emitted_at,
                        ..Default::default()
                    })
                    .collect(),
            }))
        }

        type SubmitBatchStream = tokio_stream::Empty<Result<pb::SubmitBatchResponse, Status>>;

        async fn submit_batch(
            &self,
            _: Request<Streaming<pb::SubmitBatchRequest>>,
        ) -> Result<Response<Self::SubmitBatchStream>, Status> {
            Err(Status::unimplemented("submit batch"))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarder_dead_letters_what_its_upstream_cannot_decode() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(pb::metering_service_server::MeteringServiceServer::new(
                picky::Upstream,
            ))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let dir = tempfile::tempdir().unwrap();
    let sink = format!("grpc={upstream}");
    let sidecar = Binary::start(
        dir.path(),
        &["--sink", &sink, "--forward-retry-max", "200ms"],
    )
    .await;
    let mut client = sidecar.client().await;
    for (vm, id) in [("vm-1", "f-1"), ("vm-poison", "f-2"), ("vm-3", "f-3")] {
        client
            .emit(crate::common::emit_req(vm_entry(vm, id)))
            .await
            .expect("spooled and acked");
    }
    let spool = crate::forward::spool_dir(dir.path(), upstream);
    let deadline = Instant::now() + Duration::from_secs(30);
    while crate::common::spool_pending(&spool) > 0 {
        assert!(
            Instant::now() < deadline,
            "the spool never drained: the forwarder retries the undecodable record"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dead = crate::common::ledger_lines(&spool, "dead-letter.jsonl");
    assert_eq!(dead.len(), 1, "{dead:?}");
    let v: serde_json::Value = serde_json::from_str(&dead[0]).unwrap();
    assert_eq!(v["record"]["vm_id"], "vm-poison");
    assert!(
        v["reason"]
            .as_str()
            .unwrap_or("")
            .contains("could not be decoded"),
        "{v}"
    );
    server.abort();
}
