//! The wire format, version 2: one versioned frame per message.
//!
//! ```text
//! offset  size  field
//! 0       1     magic 0xC1
//! 1       1     format version (2); a version-1 frame is refused (`unsupported_version`)
//! 2       1     flags: bit 0 = keyed (a 32-byte trailer follows the payload);
//!                     bit 1 = encrypted (only with bit 0); other bits 0
//! 3       1     destination kind: 0 peer, 1 broadcast, 2 group (a multicast copy),
//!               3 acknowledgement, 4 probe, 5 hello, 6 membership (control frames,
//!               see [`Destination::Ack`], [`Destination::Probe`], [`Destination::Hello`]
//!               and [`Destination::Membership`])
//! 4       4     sender pid, i32 little-endian, >= 0
//! 8       4     receiver pid, i32 little-endian, >= 0 (every copy names its receiver)
//! 12      4     sender incarnation, u32 little-endian
//! 16      8     sequence number, u64 little-endian, per (sender incarnation -> receiver)
//! 24      8     msg id, i64 little-endian
//! 32      ...   payload: the message, MessagePack (rmp-serde, compact struct encoding)
//! end-32  32    keyed frames only: the trailer (below)
//! ```
//!
//! A keyed frame (bit 0 only, "MAC mode") ends with a tag: keyed BLAKE3
//! (`blake3::keyed_hash`) under the 32-byte cluster key ([`crate::ClusterKey`]), over the
//! header and the payload; or, with `"mac": "siphash-2-4"` ([`crate::Options::mac`]), the
//! 16-byte SipHash-2-4 tag of the same bytes under a 128-bit key derived from the cluster
//! key (`blake3::derive_key`), then 16 zero bytes. Nothing in the frame tells the two
//! apart: nodes must agree, and a tag of the other kind does not check. An encrypted frame (bits 0 and 1, `"encrypt": true`) carries the
//! payload as XChaCha20-Poly1305 ciphertext, the 32-byte header as associated data, and
//! the trailer
//!
//! ```text
//! end-32  16    the Poly1305 tag
//! end-16  8     the sender's salt: 8 random bytes drawn once when its router starts
//! end-8   8     the sender's frame counter, u64 little-endian: random at the start, +1
//!               (wrapping) for every frame it seals
//! ```
//!
//! under a key derived from the cluster key (`blake3::derive_key`, see [`crate::seal`]),
//! so that one key never serves both as the BLAKE3 MAC key and as the cipher key. The
//! 24-byte nonce is `salt ‖ counter ‖ sender pid (i32 LE) ‖ receiver pid (i32 LE)`.
//! Nonce uniqueness is what the cipher's security rests on, so it does not borrow the
//! header's sequence number: a copy the transport refused gives its number back, to be
//! used again by the next message (and control frames need not number at all); the
//! counter is the sealer's own and never repeats within a start (2^64 frames), and the
//! fresh salt and random first count keep two starts of the same sender apart even when
//! they share an incarnation (a lost catalog): they collide only if 128 random bits do.
//! The sender pid in the nonce keeps nodes apart whatever their salts.
//! An encrypted frame is exactly as long as a MAC-mode frame of the same payload.
//!
//! A receiver checks the tag (in constant time) right after the header's own checks (a
//! configured sender, this node as receiver) and before anything that could move state.
//! Modes must match: a node without a key refuses keyed frames, a MAC-mode node refuses
//! unkeyed and encrypted ones, an encrypting node refuses unkeyed and MAC-mode ones, all
//! as `unauthenticated`. Bit 1 without bit 0 is malformed.
//!
//! The sequence number starts at 1 for each receiver when a node starts (a new
//! incarnation) and grows by one for each frame the transport *accepted* for that receiver:
//! the receiver drops a frame whose number is not above the highest it has seen from the
//! same incarnation (`replayed`) and counts the numbers it skipped (`lost_in_transit`).
//! The receiver pid is in every copy, a broadcast's too, so a frame captured on its way to
//! one node cannot be replayed to another.
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
pub const VERSION: u8 = 2;
/// Bytes before the payload.
pub const HEADER_LEN: usize = 32;
/// Bytes of the tag at the end of a keyed frame.
pub const TAG_LEN: usize = 32;
/// The flag bit of a keyed frame (a tag follows the payload).
const FLAG_KEYED: u8 = 1;
/// The flag bit of an encrypted frame (its payload is ciphertext); only with [`FLAG_KEYED`].
const FLAG_ENCRYPTED: u8 = 2;
/// The flags of an encrypted frame.
const FLAGS_ENCRYPTED: u8 = FLAG_KEYED | FLAG_ENCRYPTED;

/// A node's incarnation: incremented, durably, each time the node starts.
pub type Incarnation = u32;

/// A frame's sequence number, per (sender incarnation → receiver); the first is 1.
pub type Seq = u64;

/// What kind of send a frame is a copy of. Every copy names its receiver in
/// [`Header::to`]; the kind says how the sender addressed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Destination {
    /// A send to one peer.
    #[default]
    Peer,
    /// One copy of a broadcast.
    Broadcast,
    /// One copy of a multicast (to a list of pids, or a group the sender expanded from
    /// its own definitions): delivered like a send to one peer.
    Group,
    /// Not a message: an acknowledgement, from the frame's sender, of the frames it
    /// received from the receiver. Its payload is `(incarnation, first, highest)`: the
    /// receiver's incarnation whose frames it acknowledges, and the lowest and highest
    /// sequence numbers received from that incarnation. Its `seq` and `msg_id` are 0.
    Ack,
    /// Not a message: the highest sequence number of the frames, from the frame's sender to
    /// the receiver, that the sender's transport accepted and that are not acknowledged
    /// yet, in `seq`. Sent when a peer acknowledged nothing for a heartbeat interval, so
    /// that frames lost with no later frame to show the gap (a connection that broke and
    /// came back) are counted, and a lost acknowledgement is sent again. Its payload is a
    /// boolean, `false`; `true` makes it a write-off notice instead: the sender counted
    /// the frames up to `seq` as `unconfirmed` (it found the receiver gone), and says so
    /// before its next frame, so that the receiver does not count them again as a gap.
    /// Its `msg_id` is 0.
    Probe,
    /// Not a message: a greeting, which tells the receiver that the sender's incarnation
    /// in the header can reach it (peer events, see [`crate::Event::Up`]). Sent when the
    /// sender's connection to the receiver comes up, and again every heartbeat interval
    /// until the receiver has said it heard the sender. Its payload is a pair of booleans:
    /// whether the sender has heard the receiver (so the receiver can stop greeting), and
    /// whether this greeting answers one from the receiver (a greeting that is not an
    /// answer gets one). Its `seq` and `msg_id` are 0.
    Hello,
    /// Not a message: membership records (see [`crate::membership`]), or a node's
    /// request about itself (to join or to leave). Its payload is the records, a list of
    /// [`crate::Member`]. Its `seq` and `msg_id` are 0. Unlike every other frame, one from
    /// a pid that is not a member is read (a join request), if authenticated.
    Membership,
}

impl Destination {
    fn to_byte(self) -> u8 {
        match self {
            Self::Peer => 0,
            Self::Broadcast => 1,
            Self::Group => 2,
            Self::Ack => 3,
            Self::Probe => 4,
            Self::Hello => 5,
            Self::Membership => 6,
        }
    }

    /// Whether a frame of this kind is a control frame, which carries no message.
    pub fn is_control(self) -> bool {
        matches!(
            self,
            Self::Ack | Self::Probe | Self::Hello | Self::Membership
        )
    }

    fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(Self::Peer),
            1 => Some(Self::Broadcast),
            2 => Some(Self::Group),
            3 => Some(Self::Ack),
            4 => Some(Self::Probe),
            5 => Some(Self::Hello),
            6 => Some(Self::Membership),
            _ => None,
        }
    }
}

/// The fixed part of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Header {
    /// Who sent the frame.
    pub sender: Pid,
    /// Who the frame is for.
    pub to: Pid,
    /// How the sender addressed it.
    pub destination: Destination,
    /// The sender's incarnation when it sent the frame.
    pub incarnation: Incarnation,
    /// The sequence number of this frame from this incarnation of the sender to `to`.
    pub seq: Seq,
    /// The message id from the envelope.
    pub msg_id: MsgId,
    /// Whether a [`TAG_LEN`]-byte trailer (a tag) follows the payload.
    pub keyed: bool,
    /// Whether the payload is encrypted (and the trailer is the cipher's, see the module
    /// documentation). Only with `keyed`.
    pub encrypted: bool,
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
    /// Fewer bytes than a header (and its tag, for a keyed frame).
    #[error("frame of {0} bytes is shorter than its header and tag")]
    Truncated(usize),
    /// The first byte is not [`MAGIC`].
    #[error("bad magic byte 0x{0:02x} (expected 0x{MAGIC:02x})")]
    BadMagic(u8),
    /// A format version this build does not read.
    #[error("unsupported format version {0} (this build reads {VERSION})")]
    UnsupportedVersion(u8),
    /// Unknown flag bits are set.
    #[error("unknown flags 0x{0:02x}")]
    BadFlags(u8),
    /// An unknown destination kind.
    #[error("unknown destination kind {0}")]
    BadDestination(u8),
    /// The sender pid is negative.
    #[error("invalid sender pid {0}")]
    BadSender(Pid),
    /// The receiver pid is negative.
    #[error("invalid receiver pid {0}")]
    BadReceiver(Pid),
    /// The payload is not a valid encoding of the message type.
    #[error("payload does not decode: {0}")]
    Payload(String),
    /// The message could not be encoded.
    #[error("message does not encode: {0}")]
    Encode(String),
}

impl Header {
    /// A header for a frame from `sender` to `to`, sequence number 1, unkeyed.
    pub fn new(sender: Pid, to: Pid, incarnation: Incarnation, msg_id: MsgId) -> Self {
        Self {
            sender,
            to,
            destination: Destination::Peer,
            incarnation,
            seq: 1,
            msg_id,
            keyed: false,
            encrypted: false,
        }
    }

    fn flags(&self) -> u8 {
        match (self.keyed, self.encrypted) {
            (false, _) => 0,
            (true, false) => FLAG_KEYED,
            (true, true) => FLAGS_ENCRYPTED,
        }
    }

    fn put(&self, buf: &mut impl BufMut) {
        buf.put_u8(MAGIC);
        buf.put_u8(VERSION);
        buf.put_u8(self.flags());
        buf.put_u8(self.destination.to_byte());
        buf.put_i32_le(self.sender);
        buf.put_i32_le(self.to);
        buf.put_u32_le(self.incarnation);
        buf.put_u64_le(self.seq);
        buf.put_i64_le(self.msg_id);
    }

    /// The header's bytes, as they start a frame.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        self.put(&mut &mut out[..]);
        out
    }
}

/// Whether `frame` looks like a control frame ([`Destination::Ack`], [`Destination::Probe`],
/// [`Destination::Hello`], [`Destination::Membership`]),
/// which carries no message. For transports that report discarded frames
/// ([`crate::TransportEvent::Dropped`] counts messages only): a cheap look at the header,
/// not a check (the server checks every frame it receives).
pub fn is_control(frame: &[u8]) -> bool {
    matches!(frame, [MAGIC, VERSION, _, 3..=6, ..])
}

/// Encodes a message and its header into one (unkeyed) frame.
pub fn encode<M: Serialize + ?Sized>(header: &Header, msg: &M) -> Result<Bytes, WireError> {
    let mut buf = BytesMut::with_capacity(HEADER_LEN + 64).writer();
    header.put(buf.get_mut());
    rmp_serde::encode::write(&mut buf, msg).map_err(|e| WireError::Encode(e.to_string()))?;
    Ok(buf.into_inner().freeze())
}

/// Frames up to this size are cut from a shared slab; larger ones get their own allocation.
const SLAB_FRAME_MAX: usize = 512;
/// Size of a slab: small frames are allocated in bulk, one slab at a time.
const SLAB_LEN: usize = 4 * 1024;

/// Encodes frames like [`encode`], cutting small frames from a few shared slabs that are
/// used in turn and reused in place once every frame cut from them was dropped, so that a
/// steady stream of small messages allocates no memory for its frames.
///
/// A message is serialized once ([`Encoder::serialize`]) and framed any number of times
/// ([`Encoder::frame`]), once per destination: the headers differ (receiver, sequence
/// number), the payload bytes are copied.
///
/// A small frame keeps its slab (4 KiB) alive until it is dropped, so one frame held for
/// a long time pins at most one slab; an encoder holds at most 32 (128 KiB), enough for
/// about three thousand 64-byte messages in flight before a slab is allocated anew
/// (`cluster-mem/tests/allocations.rs` checks a window of 1,024 in flight allocates
/// nothing). Frames larger than 512 bytes are allocated at their exact size.
#[derive(Debug, Default)]
pub struct Encoder {
    /// The serialized payload of the message being framed.
    payload: Vec<u8>,
    /// Slabs used in turn, so that by the time one is used again the frames cut from it
    /// have usually been dropped and it is reused in place rather than reallocated.
    slabs: [BytesMut; SLABS],
    /// The slab frames are cut from now.
    current: usize,
}

/// Slabs an encoder rotates through.
const SLABS: usize = 32;

impl Encoder {
    /// An encoder with no slab yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serializes `msg` as the payload of the next frames.
    pub fn serialize<M: Serialize + ?Sized>(&mut self, msg: &M) -> Result<(), WireError> {
        // Don't let one huge message pin a huge buffer.
        if self.payload.capacity() > 1 << 16 {
            self.payload = Vec::new();
        }
        self.payload.clear();
        rmp_serde::encode::write(&mut self.payload, msg)
            .map_err(|e| WireError::Encode(e.to_string()))
    }

    /// The length of a frame of the serialized payload, tag included if `keyed`.
    pub fn frame_len(&self, keyed: bool) -> usize {
        HEADER_LEN + self.payload.len() + if keyed { TAG_LEN } else { 0 }
    }

    /// One frame: `header` and the payload last [serialized](Encoder::serialize), then,
    /// if `header.keyed`, the trailer `seal` returns for every byte before it. `seal` may
    /// change the payload bytes in place (encrypt them, see [`crate::seal::Sealer`]); it
    /// must leave the header as it is.
    pub fn frame(
        &mut self,
        header: &Header,
        seal: impl FnOnce(&mut [u8]) -> [u8; TAG_LEN],
    ) -> Bytes {
        let len = self.frame_len(header.keyed);
        let mut buf = if len > SLAB_FRAME_MAX {
            // A large frame: an exact allocation of its own.
            BytesMut::with_capacity(len)
        } else {
            // `current` is always below `SLABS`.
            if self.slabs[self.current].capacity() < len {
                self.current = (self.current + 1) % SLABS;
                // Reuses the slab in place if every frame cut from it was dropped already.
                self.slabs[self.current].reserve(SLAB_LEN);
            }
            std::mem::take(&mut self.slabs[self.current])
        };
        // A slab in use is empty: every frame cut from it was split off.
        header.put(&mut buf);
        buf.extend_from_slice(&self.payload);
        if header.keyed {
            let trailer = seal(&mut buf);
            buf.extend_from_slice(&trailer);
        }
        let frame = buf.split().freeze();
        if len <= SLAB_FRAME_MAX {
            self.slabs[self.current] = buf;
        }
        frame
    }

    /// Encodes a message and its header into one unkeyed frame.
    pub fn encode<M: Serialize + ?Sized>(
        &mut self,
        header: &Header,
        msg: &M,
    ) -> Result<Bytes, WireError> {
        self.serialize(msg)?;
        let header = Header {
            keyed: false,
            encrypted: false,
            ..*header
        };
        Ok(self.frame(&header, |_| [0; TAG_LEN]))
    }
}

impl Header {
    /// Parses and checks the header at the start of `bytes` (and that a keyed frame is
    /// long enough for its trailer). Total: never panics. Checks no tag: see
    /// [`crate::seal::Sealer::open`].
    pub fn parse(bytes: &[u8]) -> Result<Self, WireError> {
        // The version first, so that a short frame of another version says so.
        match bytes {
            [] => return Err(WireError::Truncated(0)),
            [magic, ..] if *magic != MAGIC => return Err(WireError::BadMagic(*magic)),
            [_, version, ..] if *version != VERSION => {
                return Err(WireError::UnsupportedVersion(*version));
            }
            _ => {}
        }
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
        let [_, _, flags, kind, ..] = field(0);
        let (keyed, encrypted) = match flags {
            0 => (false, false),
            FLAG_KEYED => (true, false),
            FLAGS_ENCRYPTED => (true, true),
            _ => return Err(WireError::BadFlags(flags)),
        };
        let destination = Destination::from_byte(kind).ok_or(WireError::BadDestination(kind))?;
        let [a, b, c, d, e, f, g, h] = field(4);
        let sender = i32::from_le_bytes([a, b, c, d]);
        let to = i32::from_le_bytes([e, f, g, h]);
        let [a, b, c, d, ..] = field(12);
        let incarnation = u32::from_le_bytes([a, b, c, d]);
        let seq = u64::from_le_bytes(field(16));
        let msg_id = i64::from_le_bytes(field(24));
        if sender < 0 {
            return Err(WireError::BadSender(sender));
        }
        if to < 0 {
            return Err(WireError::BadReceiver(to));
        }
        if keyed && bytes.len() < HEADER_LEN + TAG_LEN {
            return Err(WireError::Truncated(bytes.len()));
        }
        Ok(Self {
            sender,
            to,
            destination,
            incarnation,
            seq,
            msg_id,
            keyed,
            encrypted,
        })
    }
}

/// The payload of a frame whose header was already checked (the tag of a keyed frame
/// excluded).
fn payload_of(frame: &[u8]) -> &[u8] {
    let keyed = frame.get(2).is_some_and(|f| f & FLAG_KEYED != 0);
    let end = if keyed {
        frame.len().saturating_sub(TAG_LEN)
    } else {
        frame.len()
    };
    frame.get(HEADER_LEN..end).unwrap_or_default()
}

/// The tag of a keyed frame and the bytes it covers, or `None` if the frame is too short.
pub fn split_tag(frame: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = frame.len().checked_sub(TAG_LEN)?;
    (at >= HEADER_LEN).then(|| frame.split_at(at))
}

/// Decodes the payload of a frame whose header was already checked. Total: never panics.
pub fn decode_payload<M: DeserializeOwned>(frame: &[u8]) -> Result<M, WireError> {
    rmp_serde::from_slice(payload_of(frame)).map_err(|e| WireError::Payload(e.to_string()))
}

impl Frame {
    /// Checks the header of `bytes`. Total: never panics.
    pub fn decode(bytes: Bytes) -> Result<Self, WireError> {
        let header = Header::parse(&bytes)?;
        Ok(Self { header, bytes })
    }

    /// The payload bytes (MessagePack of the message), without the tag.
    pub fn payload(&self) -> &[u8] {
        payload_of(&self.bytes)
    }

    /// The whole frame, header (and tag) included.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Decodes the payload as `M`. Total: never panics. The payload of an encrypted
    /// frame is ciphertext until [opened](crate::seal::Sealer::open).
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

    fn h(sender: Pid, incarnation: Incarnation, msg_id: MsgId) -> Header {
        Header::new(sender, 1, incarnation, msg_id)
    }

    #[test]
    fn header_layout_is_as_documented() {
        let h = Header {
            sender: 3,
            to: 4,
            destination: Destination::Broadcast,
            incarnation: 7,
            seq: 0x0102_0304_0506_0708,
            msg_id: -2,
            keyed: false,
            encrypted: false,
        };
        let f = encode(&h, &()).unwrap();
        assert_eq!(f.len(), HEADER_LEN + 1);
        assert_eq!(&f[..4], &[MAGIC, VERSION, 0, 1]);
        assert_eq!(&f[4..8], &3i32.to_le_bytes());
        assert_eq!(&f[8..12], &4i32.to_le_bytes());
        assert_eq!(&f[12..16], &7u32.to_le_bytes());
        assert_eq!(&f[16..24], &0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(&f[24..32], &(-2i64).to_le_bytes());
        assert_eq!(&f[..HEADER_LEN], &h.to_bytes());
    }

    #[test]
    fn keyed_frames_carry_a_tag_after_the_payload() {
        let h = Header {
            keyed: true,
            ..h(1, 2, 3)
        };
        let mut encoder = Encoder::new();
        encoder.serialize("abc").unwrap();
        let f = encoder.frame(&h, |covered| {
            assert_eq!(covered.len(), HEADER_LEN + 4);
            [7; TAG_LEN]
        });
        assert_eq!(f[2], 1, "the keyed flag");
        let frame = Frame::decode(f.clone()).unwrap();
        assert_eq!(frame.header, h);
        assert_eq!(frame.message::<String>().unwrap(), "abc");
        let (covered, tag) = split_tag(&f).unwrap();
        assert_eq!((covered.len(), tag), (HEADER_LEN + 4, &[7u8; TAG_LEN][..]));
        // A keyed header without room for its tag is truncated.
        let short = f.slice(..HEADER_LEN + TAG_LEN - 1);
        assert_eq!(
            Frame::decode(short),
            Err(WireError::Truncated(HEADER_LEN + TAG_LEN - 1))
        );
    }

    #[test]
    fn typed_errors() {
        assert_eq!(
            Frame::decode(Bytes::from_static(b"")),
            Err(WireError::Truncated(0))
        );
        assert_eq!(
            Frame::decode(Bytes::from_static(b"\xC1\x02c")),
            Err(WireError::Truncated(3))
        );
        let mut f = encode(&h(1, 0, 0), &1u8).unwrap().to_vec();
        f[0] = 0;
        assert_eq!(Frame::decode(f.clone().into()), Err(WireError::BadMagic(0)));
        f[0] = MAGIC;
        f[1] = 9;
        assert_eq!(
            Frame::decode(f.clone().into()),
            Err(WireError::UnsupportedVersion(9))
        );
        f[1] = VERSION;
        for flags in [0x80, 0x04, 0x02] {
            f[2] = flags;
            assert_eq!(
                Frame::decode(f.clone().into()),
                Err(WireError::BadFlags(flags)),
                "0x02: encrypted but not keyed"
            );
        }
        f[2] = 0;
        f[3] = 7;
        assert_eq!(
            Frame::decode(f.clone().into()),
            Err(WireError::BadDestination(7))
        );
        f[3] = 0;
        f[8..12].copy_from_slice(&(-1i32).to_le_bytes());
        assert_eq!(
            Frame::decode(f.clone().into()),
            Err(WireError::BadReceiver(-1))
        );
        f[4..8].copy_from_slice(&(-5i32).to_le_bytes());
        assert_eq!(Frame::decode(f.into()), Err(WireError::BadSender(-5)));
        let frame = Frame::decode(encode(&h(1, 0, 0), "text").unwrap()).unwrap();
        assert!(matches!(frame.message::<u64>(), Err(WireError::Payload(_))));
    }

    /// A version-1 frame (the layout before sequence numbers) is refused by its version,
    /// however short it is.
    #[test]
    fn version_one_frames_are_refused_as_such() {
        let mut v1 = vec![MAGIC, 1];
        v1.extend_from_slice(&3i32.to_le_bytes());
        v1.extend_from_slice(&7u32.to_le_bytes());
        v1.extend_from_slice(&9i64.to_le_bytes());
        v1.push(0xc0);
        assert_eq!(
            Frame::decode(v1.into()),
            Err(WireError::UnsupportedVersion(1))
        );
        assert_eq!(
            Frame::decode(Bytes::from_static(&[MAGIC, 1])),
            Err(WireError::UnsupportedVersion(1))
        );
    }

    #[test]
    fn encoder_cuts_small_frames_from_one_slab_and_gives_large_ones_their_own() {
        let h = h(2, 1, 9);
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
        fn arbitrary_prefixes_of_valid_frames_never_panic(
            m in msg(), cut in 0usize..400, keyed: bool,
        ) {
            let mut encoder = Encoder::new();
            encoder.serialize(&m).unwrap();
            let f = encoder.frame(&Header { keyed, ..h(1, 1, 1) }, |_| [9; TAG_LEN]);
            let cut = cut.min(f.len());
            if let Ok(frame) = Frame::decode(f.slice(..cut)) {
                let _ = frame.message::<Msg>();
            }
        }

        #[test]
        fn envelopes_round_trip(
            m in msg(), sender in 0i32..=0xFFFF, to in 0i32..=0xFFFF, incarnation: u32,
            seq: u64, msg_id: i64, kind in 0u8..3, keyed: bool,
        ) {
            let destination = Destination::from_byte(kind).unwrap();
            let encrypted = keyed && seq % 2 == 0;
            let h = Header { sender, to, destination, incarnation, seq, msg_id, keyed, encrypted };
            let mut encoder = Encoder::new();
            encoder.serialize(&m).unwrap();
            let frame = Frame::decode(encoder.frame(&h, |_| [5; TAG_LEN])).unwrap();
            prop_assert_eq!(frame.header, h);
            prop_assert_eq!(frame.message::<Msg>().unwrap(), m);
        }

        /// Any bytes after a valid header: a frame with that header or an error, and a
        /// header that parses writes back to the same bytes.
        #[test]
        fn parsed_headers_write_back_the_same_bytes(
            bytes in proptest::collection::vec(any::<u8>(), 0..80),
        ) {
            let mut bytes = bytes;
            if let Some(b) = bytes.get_mut(..2) {
                b.copy_from_slice(&[MAGIC, VERSION]);
            }
            if let Ok(h) = Header::parse(&bytes) {
                prop_assert_eq!(&bytes[..HEADER_LEN], &h.to_bytes()[..]);
            }
        }
    }
}
