//! Any bytes given to the frame decoder and opened in one of the four modes, chosen by the
//! first input byte (0: no key, 1: BLAKE3 MAC under a key, 2: encrypted under it, 3: SipHash
//! MAC under it): a frame or an error, never a panic; a header that parses writes back to
//! the same bytes; nothing the fuzzer makes up opens as an encrypted or SipHash-tagged
//! frame, and a BLAKE3 MAC frame opens only if its tag is the key's; the same header and payload sealed in the mode open back to the payload,
//! and with any one byte changed (chosen by the input) are refused.
#![no_main]

use cluster_core::{ClusterKey, MacAlgorithm, Options};
use cluster_core::seal::Sealer;
use cluster_core::wire::{self, Encoder, Frame, Header, TAG_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((&mode, data)) = input.split_first() else {
        return;
    };
    let key = ClusterKey::from_bytes([0x5a; 32]);
    let (keyed, encrypt, siphash) = match mode % 4 {
        0 => (false, false, false),
        1 => (true, false, false),
        2 => (true, true, false),
        _ => (true, false, true),
    };
    let options = Options {
        encrypt,
        mac: if siphash {
            MacAlgorithm::SipHash24
        } else {
            MacAlgorithm::Blake3
        },
        ..Options::default()
    };
    let mode_key = || keyed.then(|| key.clone());
    let mut sealer = Sealer::for_options(mode_key(), &options);
    let receiver = Sealer::for_options(mode_key(), &options);
    let bytes = bytes::Bytes::copy_from_slice(data);
    let Ok(frame) = Frame::decode(bytes.clone()) else {
        return;
    };
    // The payload decoders are total too, whatever type is asked for.
    let _ = frame.message::<String>();
    let _ = frame.message::<(u64, Vec<u8>, Option<i32>)>();
    assert_eq!(&data[..wire::HEADER_LEN], &frame.header.to_bytes()[..]);
    if let Some(opened) = receiver.open(bytes, &frame.header) {
        assert_eq!(frame.header.keyed, keyed, "a frame of another mode opened");
        assert!(!encrypt, "the fuzzer forged an encrypted frame");
        assert!(!siphash, "the fuzzer forged a SipHash tag");
        if keyed {
            assert!(!frame.header.encrypted);
            let at = data.len() - TAG_LEN;
            assert_eq!(&data[at..], &key.tag(&data[..at])[..], "a forged tag");
        }
        let opened = Frame::decode(opened).expect("an opened frame decodes");
        let _ = opened.message::<Vec<u8>>();
    }
    // The same header and payload, sealed in this mode: opens back to the payload.
    let mut encoder = Encoder::new();
    let payload = frame.payload().to_vec();
    encoder.serialize(&payload).expect("bytes encode");
    let header = sealer.mark(Header {
        keyed: false,
        encrypted: false,
        ..frame.header
    });
    let sealed = encoder.frame(&header, |covered| sealer.seal(covered));
    let parsed = Header::parse(&sealed).expect("a frame we wrote parses");
    assert_eq!(parsed, header);
    let opened = receiver
        .open(sealed.clone(), &parsed)
        .expect("a frame we sealed opens");
    let back: Vec<u8> = Frame::decode(opened)
        .expect("an opened frame decodes")
        .message()
        .expect("its payload decodes");
    assert_eq!(back, payload);
    if keyed {
        let at = usize::from(mode / 4) * 7919 % sealed.len();
        let mut altered = sealed.to_vec();
        altered[at] ^= 1 | (mode >> 1);
        let refused = match Header::parse(&altered) {
            Ok(h) => receiver.open(altered.into(), &h).is_none(),
            Err(_) => true,
        };
        assert!(refused, "a frame altered at byte {at} opened");
    }
});
