//! `EmitBatchRequest` and `SubmitBatchRequest` as meterd decodes them: each
//! entry (batch) of the repeated field on its own. A generated decoder
//! fails the whole message for one entry with invalid UTF-8 in a string or
//! a malformed field, so one bad entry would cost its neighbours their
//! answers (and end a SubmitBatch stream). Here the bad one is kept aside
//! with what could not be decoded, and answered as rejected at its
//! position; only a frame that cannot be split into entries fails the call.
//!
//! Encoding is prost's for the repeated field (clients build these with the
//! decoded entries only).

use bytes::{Buf, BufMut, Bytes};
use prost::encoding::{self, DecodeContext, WireType};
use prost::{DecodeError, Message};

use super::{Entry, MetricBatch};

/// An element of a repeated field that could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Undecodable {
    /// Its position among all elements of the field, from 0.
    pub index: usize,
    /// What could not be decoded (see [`super::codec::describe`]).
    pub error: String,
}

/// EmitBatchRequest carries entries to record (see `metering.proto`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EmitBatchRequest {
    /// The entries that could be decoded, in request order.
    pub entries: Vec<Entry>,
    /// The ones that could not; always empty on the client side.
    pub undecodable: Vec<Undecodable>,
}

/// SubmitBatchRequest carries batches to record (see `metering.proto`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SubmitBatchRequest {
    /// The batches that could be decoded, in request order.
    pub batches: Vec<MetricBatch>,
    /// The ones that could not; always empty on the client side.
    pub undecodable: Vec<Undecodable>,
}

/// The elements of a lenient repeated field in request order.
pub struct Positions<T> {
    decoded: std::vec::IntoIter<T>,
    undecodable: std::iter::Peekable<std::vec::IntoIter<Undecodable>>,
    next: usize,
}

impl<T> Positions<T> {
    fn new(decoded: Vec<T>, undecodable: Vec<Undecodable>) -> Self {
        Positions {
            decoded: decoded.into_iter(),
            undecodable: undecodable.into_iter().peekable(),
            next: 0,
        }
    }
}

impl<T> Iterator for Positions<T> {
    type Item = Result<T, String>;

    fn next(&mut self) -> Option<Self::Item> {
        let index = self.next;
        self.next += 1;
        if self.undecodable.peek().is_some_and(|u| u.index == index) {
            return self.undecodable.next().map(|u| Err(u.error));
        }
        match self.decoded.next() {
            Some(t) => Some(Ok(t)),
            // Only undecodable ones are left (positions are dense, so this
            // happens only if they were built out of order).
            None => self.undecodable.next().map(|u| Err(u.error)),
        }
    }
}

/// Decodes one length-delimited element of a repeated message field on its
/// own. A frame that cannot be split (wrong wire type, a length past the
/// end) is an error for the whole message.
fn merge_element<T: Message + Default>(
    decoded: &mut Vec<T>,
    undecodable: &mut Vec<Undecodable>,
    wire_type: WireType,
    buf: &mut impl Buf,
    ctx: DecodeContext,
) -> Result<(), DecodeError> {
    let mut bytes = Bytes::new();
    encoding::bytes::merge(wire_type, &mut bytes, buf, ctx)?;
    let index = decoded.len() + undecodable.len();
    match T::decode(bytes) {
        Ok(t) => decoded.push(t),
        Err(e) => undecodable.push(Undecodable {
            index,
            error: super::codec::describe(&e),
        }),
    }
    Ok(())
}

/// The inherent methods and the `Message` impl of a lenient request whose
/// repeated field `$field` (tag 1) holds `$item`s.
macro_rules! lenient {
    ($name:ident, $field:ident, $item:ty) => {
        impl $name {
            pub fn new($field: Vec<$item>) -> Self {
                $name {
                    $field,
                    undecodable: Vec::new(),
                }
            }

            /// Every element of the request at its position: decoded, or why not.
            pub fn into_positions(self) -> Positions<$item> {
                Positions::new(self.$field, self.undecodable)
            }

            /// How many elements the request holds, decodable or not.
            pub fn len(&self) -> usize {
                self.$field.len() + self.undecodable.len()
            }

            pub fn is_empty(&self) -> bool {
                self.len() == 0
            }
        }

        impl Message for $name {
            fn encode_raw(&self, buf: &mut impl BufMut) {
                encoding::message::encode_repeated(1, &self.$field, buf);
            }

            fn merge_field(
                &mut self,
                tag: u32,
                wire_type: WireType,
                buf: &mut impl Buf,
                ctx: DecodeContext,
            ) -> Result<(), DecodeError> {
                match tag {
                    1 => {
                        merge_element(&mut self.$field, &mut self.undecodable, wire_type, buf, ctx)
                            .map_err(|mut e| {
                                e.push(stringify!($name), stringify!($field));
                                e
                            })
                    }
                    _ => encoding::skip_field(wire_type, tag, buf, ctx),
                }
            }

            fn encoded_len(&self) -> usize {
                encoding::message::encoded_len_repeated(1, &self.$field)
            }

            fn clear(&mut self) {
                self.$field.clear();
                self.undecodable.clear();
            }
        }
    };
}

lenient!(EmitBatchRequest, entries, Entry);
lenient!(SubmitBatchRequest, batches, MetricBatch);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::Kind;

    fn entry(vm: &str) -> Entry {
        Entry {
            kind: Kind::VmComputeStart as i32,
            vm_id: vm.into(),
            ..Default::default()
        }
    }

    /// The bytes of an EmitBatchRequest whose second entry has invalid
    /// UTF-8 in vm_id.
    fn with_bad_second_entry() -> Vec<u8> {
        let good = EmitBatchRequest::new(vec![entry("vm-a"), entry("vm-X"), entry("vm-c")])
            .encode_to_vec();
        let at = good
            .windows(4)
            .position(|w| w == b"vm-X")
            .expect("the id is in the bytes");
        let mut bad = good;
        bad[at + 3] = 0xff;
        bad
    }

    #[test]
    fn a_bad_entry_is_kept_aside_at_its_position() {
        let req = EmitBatchRequest::decode(with_bad_second_entry().as_slice()).expect("frame");
        assert_eq!(req.len(), 3);
        let got: Vec<_> = req.into_positions().collect();
        assert_eq!(got[0].as_ref().map(|e| e.vm_id.as_str()), Ok("vm-a"));
        let err = got[1].as_ref().expect_err("undecodable");
        assert!(err.contains("Entry.vm_id"), "{err}");
        assert!(err.contains("UTF-8"), "{err}");
        assert_eq!(got[2].as_ref().map(|e| e.vm_id.as_str()), Ok("vm-c"));
    }

    #[test]
    fn positions_keep_request_order_at_both_ends() {
        // Bad, good, bad: spoil the first and the last entry.
        let bytes = EmitBatchRequest::new(vec![entry("vm-X"), entry("vm-b"), entry("vm-Y")])
            .encode_to_vec();
        let mut bytes = bytes;
        for marker in [b"vm-X", b"vm-Y"] {
            let at = bytes.windows(4).position(|w| w == marker).expect("id");
            bytes[at + 3] = 0xfe;
        }
        let req = EmitBatchRequest::decode(bytes.as_slice()).expect("frame");
        let got: Vec<_> = req.into_positions().map(|p| p.map(|e| e.vm_id)).collect();
        assert_eq!(got.len(), 3);
        assert!(got[0].is_err() && got[2].is_err(), "{got:?}");
        assert_eq!(got[1].as_deref(), Ok("vm-b"));
    }

    #[test]
    fn the_generated_decoder_would_fail_the_whole_message() {
        // What the lenient type exists for: prost fails all three entries.
        #[derive(Clone, PartialEq, prost::Message)]
        struct Plain {
            #[prost(message, repeated, tag = "1")]
            entries: Vec<Entry>,
        }
        assert!(Plain::decode(with_bad_second_entry().as_slice()).is_err());
    }

    #[test]
    fn a_frame_that_cannot_be_split_fails_the_message() {
        let mut bytes = EmitBatchRequest::new(vec![entry("vm-a")]).encode_to_vec();
        bytes[1] = 0x7f; // the entry's length now runs past the end
        let e = EmitBatchRequest::decode(bytes.as_slice()).expect_err("broken frame");
        assert!(e.to_string().contains("EmitBatchRequest.entries"), "{e}");
    }

    #[test]
    fn encodes_as_the_generated_message_does() {
        let req = SubmitBatchRequest::new(vec![MetricBatch {
            uuid: "u".into(),
            ..Default::default()
        }]);
        let bytes = req.encode_to_vec();
        assert_eq!(bytes.len(), req.encoded_len());
        assert_eq!(SubmitBatchRequest::decode(bytes.as_slice()).ok(), Some(req));
    }
}
