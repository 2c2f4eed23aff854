//! Any bytes given to the `zeromq` backend's control-frame decoder (heartbeat,
//! acknowledgement): a control frame or not, never a panic; one that decodes encodes back
//! to the same bytes (checked inside `fuzz_control_frame`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let decoded = cluster_zmq::fuzz_control_frame(data);
    if decoded {
        assert_eq!(data.len(), 10);
    }
});
