//! The wire format: one versioned frame per message.
//!
//! ```text
//! offset  size  field
//! 0       1     magic 0xC1
//! 1       1     format version (1)
//! 2       4     sender pid, i32 little-endian, >= 0
//! 6       4     sender incarnation, u32 little-endian
//! 10      8     msg id, i64 little-endian
//! 18      ...   payload: the message, MessagePack (rmp-serde, compact struct encoding)
//! ```
//!
//! Decoding is total: any byte string gives a [`Frame`] or a [`WireError`], never a panic.
//! The header is checked by [`Frame::decode`]; the payload is decoded to the message type
//! separately ([`Frame::message`]), so a transport can route on the header alone.

use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::envelope::{MsgId, Pid};

/// First byte of every frame.
pub const MAGIC: u8 = 0xC1;
/// The format version this build writes and reads.
pub const VERSION: u8 = 1;
/// Bytes before the payload.
pub const HEADER_LEN: usize = 18;

/// A node's incarnation: incremented, durably, each time the node starts.
pub type Incarnation = u32;

/// The fixed part of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Header {
    /// Who sent the frame.
    pub sender: Pid,
    /// The sender's incarnation when it sent the frame.
    pub incarnation: Incarnation,
    /// The message id from the envelope.
    pub msg_id: MsgId,
}

/// A decoded frame: a checked header and the still-encoded payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The header.
    pub header: Header,
    bytes: Bytes,
}

/// Why bytes are not a frame, or a message could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// Fewer bytes than a header.
    #[error("frame of {0} bytes is shorter than the {HEADER_LEN}-byte header")]
    Truncated(usize),
    /// The first byte is not [`MAGIC`].
    #[error("bad magic byte 0x{0:02x} (expected 0x{MAGIC:02x})")]
    BadMagic(u8),
    /// A format version this build does not read.
    #[error("unsupported format version {0} (this build reads {VERSION})")]
    UnsupportedVersion(u8),
    /// The sender pid is negative.
    #[error("invalid sender pid {0}")]
    BadSender(Pid),
    /// The payload is not a valid encoding of the message type.
    #[error("payload does not decode: {0}")]
    Payload(String),
    /// The message could not be encoded.
    #[error("message does not encode: {0}")]
    Encode(String),
}

impl Header {
    fn put(&self, buf: &mut impl BufMut) {
        buf.put_u8(MAGIC);
        buf.put_u8(VERSION);
        buf.put_i32_le(self.sender);
        buf.put_u32_le(self.incarnation);
        buf.put_i64_le(self.msg_id);
    }
}

/// Encodes a message and its header into one frame.
pub fn encode<M: Serialize + ?Sized>(header: &Header, msg: &M) -> Result<Bytes, WireError> {
    let mut buf = BytesMut::with_capacity(HEADER_LEN + 64).writer();
    header.put(buf.get_mut());
    rmp_serde::encode::write(&mut buf, msg).map_err(|e| WireError::Encode(e.to_string()))?;
    Ok(buf.into_inner().freeze())
}

/// Encodes like [`encode`], through a reusable scratch buffer, so the frame is allocated
/// once at its exact size.
pub fn encode_with<M: Serialize + ?Sized>(
    scratch: &mut Vec<u8>,
    header: &Header,
    msg: &M,
) -> Result<Bytes, WireError> {
    scratch.clear();
    header.put(scratch);
    rmp_serde::encode::write(scratch, msg).map_err(|e| WireError::Encode(e.to_string()))?;
    let frame = Bytes::copy_from_slice(scratch);
    // Don't let one huge message pin a huge buffer.
    if scratch.capacity() > 1 << 16 {
        *scratch = Vec::new();
    }
    Ok(frame)
}

/// Frames up to this size are cut from a shared slab; larger ones get their own allocation.
const SLAB_FRAME_MAX: usize = 512;
/// Size of a slab: small frames are allocated in bulk, one slab at a time.
const SLAB_LEN: usize = 4 * 1024;

/// Encodes frames like [`encode`], cutting small frames from a few shared slabs that are
/// used in turn and reused in place once every frame cut from them was dropped, so that a
/// steady stream of small messages allocates no memory for its frames.
///
/// A small frame keeps its slab (4 KiB) alive until it is dropped, so one frame held for a
/// long time pins at most one slab; an encoder holds at most four. Frames larger than
/// 512 bytes are allocated at their exact size.
#[derive(Debug, Default)]
pub struct Encoder {
    /// The message is encoded here first: writing to a `Vec` is the cheapest `io::Write`.
    scratch: Vec<u8>,
    /// Slabs used in turn, so that by the time one is used again the frames cut from it
    /// have usually been dropped and it is reused in place rather than reallocated.
    slabs: [BytesMut; SLABS],
    /// The slab frames are cut from now.
    current: usize,
}

/// Slabs an encoder rotates through.
const SLABS: usize = 4;

impl Encoder {
    /// An encoder with no slab yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Encodes a message and its header into one frame.
    pub fn encode<M: Serialize + ?Sized>(
        &mut self,
        header: &Header,
        msg: &M,
    ) -> Result<Bytes, WireError> {
        let scratch = &mut self.scratch;
        scratch.clear();
        header.put(scratch);
        rmp_serde::encode::write(scratch, msg).map_err(|e| WireError::Encode(e.to_string()))?;
        if scratch.len() > SLAB_FRAME_MAX {
            // A large frame: an exact allocation of its own.
            let frame = Bytes::copy_from_slice(scratch);
            // Don't let one huge message pin a huge buffer.
            if scratch.capacity() > 1 << 16 {
                *scratch = Vec::new();
            }
            return Ok(frame);
        }
        // `current` is always below `SLABS`.
        if self.slabs[self.current].capacity() < scratch.len() {
            self.current = (self.current + 1) % SLABS;
            // Reuses the slab in place if every frame cut from it was dropped already.
            self.slabs[self.current].reserve(SLAB_LEN);
        }
        let slab = &mut self.slabs[self.current];
        slab.extend_from_slice(scratch);
        Ok(slab.split().freeze())
    }
}

impl Header {
    /// Parses and checks the header at the start of `bytes`. Total: never panics.
    pub fn parse(bytes: &[u8]) -> Result<Self, WireError> {
        let Some(head) = bytes.get(..HEADER_LEN) else {
            return Err(WireError::Truncated(bytes.len()));
        };
        let field = |at: usize| -> [u8; 8] {
            let mut out = [0u8; 8];
            if let Some(src) = head.get(at..(at + 8).min(HEADER_LEN)) {
                out[..src.len()].copy_from_slice(src);
            }
            out
        };
        let [magic, version, ..] = field(0);
        if magic != MAGIC {
            return Err(WireError::BadMagic(magic));
        }
        if version != VERSION {
            return Err(WireError::UnsupportedVersion(version));
        }
        let [a, b, c, d, ..] = field(2);
        let sender = i32::from_le_bytes([a, b, c, d]);
        let [a, b, c, d, ..] = field(6);
        let incarnation = u32::from_le_bytes([a, b, c, d]);
        let msg_id = i64::from_le_bytes(field(10));
        if sender < 0 {
            return Err(WireError::BadSender(sender));
        }
        Ok(Self {
            sender,
            incarnation,
            msg_id,
        })
    }
}

/// Decodes the payload of a frame whose header was already checked. Total: never panics.
pub fn decode_payload<M: DeserializeOwned>(frame: &[u8]) -> Result<M, WireError> {
    let payload = frame.get(HEADER_LEN..).unwrap_or_default();
    rmp_serde::from_slice(payload).map_err(|e| WireError::Payload(e.to_string()))
}

impl Frame {
    /// Checks the header of `bytes`. Total: never panics.
    pub fn decode(bytes: Bytes) -> Result<Self, WireError> {
        let header = Header::parse(&bytes)?;
        Ok(Self { header, bytes })
    }

    /// The payload bytes (MessagePack of the message).
    pub fn payload(&self) -> &[u8] {
        self.bytes.get(HEADER_LEN..).unwrap_or_default()
    }

    /// The whole frame, header included.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Decodes the payload as `M`. Total: never panics.
    pub fn message<M: DeserializeOwned>(&self) -> Result<M, WireError> {
        decode_payload(&self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Msg {
        term: u64,
        text: String,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        votes: Vec<(i32, bool)>,
    }

    #[test]
    fn header_layout_is_as_documented() {
        let h = Header {
            sender: 3,
            incarnation: 7,
            msg_id: -2,
        };
        let f = encode(&h, &()).unwrap();
        assert_eq!(f.len(), HEADER_LEN + 1);
        assert_eq!(&f[..2], &[MAGIC, VERSION]);
        assert_eq!(&f[2..6], &3i32.to_le_bytes());
        assert_eq!(&f[6..10], &7u32.to_le_bytes());
        assert_eq!(&f[10..18], &(-2i64).to_le_bytes());
    }

    #[test]
    fn typed_errors() {
        assert_eq!(
            Frame::decode(Bytes::from_static(b"abc")),
            Err(WireError::Truncated(3))
        );
        let mut f = encode(
            &Header {
                sender: 1,
                incarnation: 0,
                msg_id: 0,
            },
            &1u8,
        )
        .unwrap()
        .to_vec();
        f[0] = 0;
        assert_eq!(Frame::decode(f.clone().into()), Err(WireError::BadMagic(0)));
        f[0] = MAGIC;
        f[1] = 9;
        assert_eq!(
            Frame::decode(f.clone().into()),
            Err(WireError::UnsupportedVersion(9))
        );
        f[1] = VERSION;
        f[2..6].copy_from_slice(&(-5i32).to_le_bytes());
        assert_eq!(Frame::decode(f.into()), Err(WireError::BadSender(-5)));
        let f = encode(
            &Header {
                sender: 1,
                incarnation: 0,
                msg_id: 0,
            },
            "text",
        )
        .unwrap();
        let frame = Frame::decode(f).unwrap();
        assert!(matches!(frame.message::<u64>(), Err(WireError::Payload(_))));
    }

    #[test]
    fn encoder_cuts_small_frames_from_one_slab_and_gives_large_ones_their_own() {
        let h = Header {
            sender: 2,
            incarnation: 1,
            msg_id: 9,
        };
        let mut encoder = Encoder::new();
        let a = encoder.encode(&h, "a").unwrap();
        let b = encoder.encode(&h, "bb").unwrap();
        assert_eq!(a, encode(&h, "a").unwrap());
        assert_eq!(b, encode(&h, "bb").unwrap());
        // Consecutive small frames are adjacent in the same slab.
        assert_eq!(a.as_ptr().wrapping_add(a.len()), b.as_ptr());
        let big = "x".repeat(3 * SLAB_LEN);
        let f = encoder.encode(&h, &big).unwrap();
        assert_eq!(Frame::decode(f).unwrap().message::<String>().unwrap(), big);
        // Frames stay intact however many slabs are used and dropped.
        let frames: Vec<_> = (0..1000)
            .map(|i| (i, encoder.encode(&h, &vec![i as u8; i % 40]).unwrap()))
            .collect();
        for (i, f) in frames {
            let m: Vec<u8> = Frame::decode(f).unwrap().message().unwrap();
            assert_eq!(m, vec![i as u8; i % 40]);
        }
    }

    fn msg() -> impl Strategy<Value = Msg> {
        (
            any::<u64>(),
            ".*",
            proptest::collection::vec(any::<u8>(), 0..300),
            proptest::collection::vec(any::<(i32, bool)>(), 0..5),
        )
            .prop_map(|(term, text, data, votes)| Msg {
                term,
                text,
                data,
                votes,
            })
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(frame) = Frame::decode(bytes.into()) {
                let _ = frame.message::<Msg>();
                let _ = frame.message::<String>();
            }
        }

        #[test]
        fn arbitrary_prefixes_of_valid_frames_never_panic(m in msg(), cut in 0usize..400) {
            let f = encode(&Header { sender: 1, incarnation: 1, msg_id: 1 }, &m).unwrap();
            let cut = cut.min(f.len());
            if let Ok(frame) = Frame::decode(f.slice(..cut)) {
                let _ = frame.message::<Msg>();
            }
        }

        #[test]
        fn envelopes_round_trip(m in msg(), sender in 0i32..=0xFFFF, incarnation: u32, msg_id: i64) {
            let h = Header { sender, incarnation, msg_id };
            let frame = Frame::decode(encode(&h, &m).unwrap()).unwrap();
            prop_assert_eq!(frame.header, h);
            prop_assert_eq!(frame.message::<Msg>().unwrap(), m);
        }
    }
}
