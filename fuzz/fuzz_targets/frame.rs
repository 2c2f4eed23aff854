//! Any bytes given to the frame decoder: a frame or an error, never a panic; a frame that
//! decodes re-encodes to the same header.
#![no_main]

use cluster_core::wire::{self, Frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = Frame::decode(bytes::Bytes::copy_from_slice(data)) {
        // The payload decoders are total too, whatever type is asked for.
        let _ = frame.message::<String>();
        let _ = frame.message::<(u64, Vec<u8>, Option<i32>)>();
        let again = wire::encode(&frame.header, &()).expect("a unit payload encodes");
        let parsed = wire::Header::parse(&again).expect("a header we wrote parses");
        assert_eq!(parsed, frame.header);
    }
});
