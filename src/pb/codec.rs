//! The codec of every generated service and client: prost's, except for
//! what a message that cannot be decoded means. tonic's prost codec answers
//! `INTERNAL` for it, which says "the server is broken" and makes a careful
//! client retry forever. A request that does not decode is the client's
//! mistake: `INVALID_ARGUMENT`, naming what could not be decoded, so that a
//! forwarder dead-letters the record instead. A response that does not
//! decode is the server's: `INTERNAL`, retried.

use std::marker::PhantomData;

use tonic::codec::{Codec as TonicCodec, DecodeBuf, Decoder};
use tonic::Status;

/// Which end decodes a message type. Every message of `metering.v1` that
/// crosses the wire names its side here, so a new RPC does not compile
/// until its messages do.
pub trait Side {
    /// True for requests (decoded by the server).
    const REQUEST: bool;
}

macro_rules! side {
    ($request:literal: $($t:ident),* $(,)?) => {
        $(impl Side for super::$t { const REQUEST: bool = $request; })*
    };
}
side!(true: EmitRequest, EmitBatchRequest, SubmitBatchRequest, TailRequest, UsageRequest, HeadRequest);
side!(false: EmitResponse, EmitBatchResponse, SubmitBatchResponse, TailResponse, UsageResponse, HeadResponse);

/// prost encoding with meterd's decode errors (see the module doc).
#[derive(Debug, Clone)]
pub struct Codec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Codec(PhantomData)
    }
}

impl<T, U> TonicCodec for Codec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Side + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = tonic_prost::ProstEncoder<T>;
    type Decoder = MessageDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        MessageDecoder(PhantomData)
    }
}

/// Decodes `U` with prost; a failure is [`decode_error`].
#[derive(Debug, Clone)]
pub struct MessageDecoder<U>(PhantomData<U>);

impl<U: prost::Message + Default + Side> Decoder for MessageDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf)
            .map(Some)
            .map_err(|e| decode_error(&e, U::REQUEST))
    }
}

/// The status of a message that could not be decoded.
pub fn decode_error(e: &prost::DecodeError, request: bool) -> Status {
    let what = describe(e);
    if request {
        tracing::debug!(error = %what, "a request could not be decoded");
        Status::invalid_argument(format!("the request could not be decoded: {what}"))
    } else {
        Status::internal(format!("the response could not be decoded: {what}"))
    }
}

/// prost's message without its fixed prefix: the path of fields down to
/// the one that broke, e.g. `Entry.vm_id: invalid string value: data is
/// not UTF-8 encoded`.
pub fn describe(e: &prost::DecodeError) -> String {
    let full = e.to_string();
    match full.strip_prefix("failed to decode Protobuf message: ") {
        Some(rest) => rest.to_owned(),
        None => full,
    }
}
