//! Any bytes given to the frame decoder, with and without a cluster key: a frame or an
//! error, never a panic; a header that parses writes back to the same bytes; a keyed frame
//! is authentic only if its tag checks, and re-signing the same header and payload under
//! the key gives a frame that checks.
#![no_main]

use cluster_core::ClusterKey;
use cluster_core::wire::{self, Encoder, Frame, TAG_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = ClusterKey::from_bytes([0x5a; 32]);
    let Ok(frame) = Frame::decode(bytes::Bytes::copy_from_slice(data)) else {
        return;
    };
    // The payload decoders are total too, whatever type is asked for.
    let _ = frame.message::<String>();
    let _ = frame.message::<(u64, Vec<u8>, Option<i32>)>();
    assert_eq!(&data[..wire::HEADER_LEN], &frame.header.to_bytes()[..]);
    let authentic = frame.header.keyed
        && wire::split_tag(data).is_some_and(|(covered, tag)| key.verify(covered, tag));
    if authentic {
        // Only the fuzzer's luck (or a frame signed here) gets a tag right.
        assert_eq!(
            &data[data.len() - TAG_LEN..],
            &key.tag(&data[..data.len() - TAG_LEN])[..]
        );
    }
    // The same header and a unit payload, signed under the key: decodes and checks.
    let mut encoder = Encoder::new();
    encoder.serialize(&()).expect("a unit payload encodes");
    let header = wire::Header {
        keyed: true,
        ..frame.header
    };
    let signed = encoder.frame(&header, |covered| key.tag(covered));
    let again = Frame::decode(signed.clone()).expect("a frame we wrote decodes");
    assert_eq!(again.header, header);
    let (covered, tag) = wire::split_tag(&signed).expect("a keyed frame has a tag");
    assert!(key.verify(covered, tag));
    assert!(!ClusterKey::from_bytes([0xa5; 32]).verify(covered, tag));
});
