//! Any text given to the config parser: a config or an error naming the problem, never a
//! panic; a config that parses lists its own pids.
#![no_main]

use cluster_core::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // `key_file` / `key_env` make parsing read a file or the environment (a named pipe
    // would block the fuzzer); keys are tested in cluster-core's own tests.
    if text.contains("key_") {
        return;
    }
    match Config::parse(text, "fuzz.json") {
        Ok(config) => {
            for pid in config.pids() {
                assert!(config.check_member(pid).is_ok());
            }
        }
        Err(e) => assert!(e.to_string().starts_with("fuzz.json: ")),
    }
});
