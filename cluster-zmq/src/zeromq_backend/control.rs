//! Control frames of the `zeromq` backend (heartbeat, acknowledgement): never handed to
//! the server.

use bytes::{BufMut, Bytes, BytesMut};

/// First byte of control frames; cluster frames start with `wire::MAGIC` (0xC1).
pub(crate) const MAGIC: u8 = 0xC2;
/// Control frame length: magic, kind, u64 little-endian.
pub(crate) const LEN: usize = 10;

/// What a control frame says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Control {
    /// Sender → receiver: "are you there?"
    Ping,
    /// Receiver → sender: "yes; I have received this many frames on this connection".
    Ack(u64),
}

pub(crate) fn encode(c: Control) -> Bytes {
    let mut b = BytesMut::with_capacity(LEN);
    b.put_u8(MAGIC);
    let (kind, n) = match c {
        Control::Ping => (1u8, 0u64),
        Control::Ack(n) => (2u8, n),
    };
    b.put_u8(kind);
    b.put_u64_le(n);
    b.freeze()
}

/// A control frame, or `None` for anything else (which is then a candidate cluster
/// frame, checked by the server).
pub(crate) fn decode(b: &[u8]) -> Option<Control> {
    if b.len() != LEN || b.first() != Some(&MAGIC) {
        return None;
    }
    let mut n = [0u8; 8];
    n.copy_from_slice(b.get(2..LEN)?);
    let n = u64::from_le_bytes(n);
    match b.get(1) {
        // One encoding per control frame: a ping carries no number.
        Some(1) if n == 0 => Some(Control::Ping),
        Some(2) => Some(Control::Ack(n)),
        _ => None,
    }
}

/// Fuzzing only (the `control` target of `fuzz/`): decodes `bytes` as a control frame and
/// checks that one that decodes encodes back to the same bytes. Whether it decoded.
pub(crate) fn fuzz_decode(bytes: &[u8]) -> bool {
    match decode(bytes) {
        Some(c) => {
            assert_eq!(&encode(c)[..], bytes, "control frames have one encoding");
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::{Control, decode, encode};

    #[test]
    fn control_frames_round_trip_and_never_look_like_cluster_frames() {
        for c in [Control::Ping, Control::Ack(0), Control::Ack(u64::MAX)] {
            let b = encode(c);
            assert_eq!(decode(&b), Some(c));
            assert_ne!(b[0], cluster_core::wire::MAGIC);
        }
        assert_eq!(decode(b""), None);
        assert_eq!(decode(&[0xC2, 9, 0, 0, 0, 0, 0, 0, 0, 0]), None);
        assert_eq!(decode(&[0xC1, 1, 0, 0, 0, 0, 0, 0, 0, 0]), None);
        assert_eq!(decode(&[0xC2, 1, 0]), None);
    }

    /// Found while writing the `control` fuzz target (its round-trip check): a ping with
    /// a number decoded as a ping, so two byte strings meant the same frame. A ping
    /// carries none.
    #[test]
    fn a_ping_with_a_number_is_not_a_control_frame() {
        assert_eq!(decode(&[0xC2, 1, 5, 0, 0, 0, 0, 0, 0, 0]), None);
        assert!(super::fuzz_decode(&encode(Control::Ping)));
        assert!(!super::fuzz_decode(&[0xC2, 1, 0, 0, 0, 0, 0, 0, 0, 1]));
    }
}
