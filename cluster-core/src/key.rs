//! The cluster key: 32 secret bytes every node of a cluster shares, which authenticate
//! every frame (a keyed-BLAKE3 tag over header and payload, see [`crate::wire`]), or, with
//! `"encrypt"`, from which the frame-encryption key is derived (see [`crate::seal`]).
//!
//! Written as 64 hexadecimal digits, in a file (`"key_file"` in the config) or in an
//! environment variable (`"key_env"`): `head -c 32 /dev/urandom | xxd -p -c 64`.

use std::fmt;
use std::path::Path;

use crate::wire::TAG_LEN;

/// The `blake3::derive_key` context of the SipHash-2-4 MAC key: SipHash never uses the
/// cluster key itself (which the BLAKE3 MAC uses).
const SIPHASH_KEY_CONTEXT: &str = "cluster wire v2 2026-12-01 frame MAC key SipHash-2-4-128";

/// Bytes of a cluster key.
pub const KEY_LEN: usize = 32;

/// A cluster key. Its `Debug` form hides the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey([u8; KEY_LEN]);

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

impl ClusterKey {
    /// A key of these bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// Parses 64 hexadecimal digits (either case; surrounding whitespace, such as the
    /// newline `xxd` writes, is ignored). The error says what is wrong, never the key.
    pub fn from_hex(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.len() != 2 * KEY_LEN {
            return Err(format!(
                "expected {} hexadecimal digits ({KEY_LEN} bytes), found {} characters",
                2 * KEY_LEN,
                text.chars().count()
            ));
        }
        let mut out = [0u8; KEY_LEN];
        for (i, pair) in text.as_bytes().chunks(2).enumerate() {
            let digit = |b: u8| (b as char).to_digit(16);
            match (pair, out.get_mut(i)) {
                ([hi, lo], Some(slot)) => match (digit(*hi), digit(*lo)) {
                    (Some(hi), Some(lo)) => *slot = (hi * 16 + lo) as u8,
                    _ => {
                        return Err(format!(
                            "character {} or {} is not a hexadecimal digit",
                            2 * i + 1,
                            2 * i + 2
                        ));
                    }
                },
                _ => return Err("not hexadecimal digits".into()),
            }
        }
        Ok(Self(out))
    }

    /// Reads a key file (see [`ClusterKey::from_hex`]). The error names no key bytes.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        use std::io::Read;
        let cannot =
            |e: std::io::Error| format!("key file {}: cannot read it: {e}", path.display());
        // At most a few KiB: a key is 64 digits, and a path such as /dev/zero must give an
        // error, not fill the memory.
        let mut text = String::new();
        std::fs::File::open(path)
            .map_err(cannot)?
            .take(4096)
            .read_to_string(&mut text)
            .map_err(cannot)?;
        Self::from_hex(&text).map_err(|e| format!("key file {}: {e}", path.display()))
    }

    /// Reads the key from the environment variable `var`.
    pub fn from_env(var: &str) -> Result<Self, String> {
        let text = std::env::var(var).map_err(|e| {
            format!("key environment variable {var}: {e} (set it to 64 hexadecimal digits)")
        })?;
        Self::from_hex(&text).map_err(|e| format!("key environment variable {var}: {e}"))
    }

    /// A key for another use, derived from this one (`blake3::derive_key` under
    /// `context`), so that the cluster key itself serves one purpose only.
    pub(crate) fn derive_key(&self, context: &str) -> [u8; KEY_LEN] {
        blake3::derive_key(context, &self.0)
    }

    /// The 128-bit SipHash-2-4 key of `"mac": "siphash-2-4"`, derived from this one.
    pub(crate) fn siphash_key(&self) -> [u8; 16] {
        let derived = self.derive_key(SIPHASH_KEY_CONTEXT);
        let mut out = [0u8; 16];
        out.copy_from_slice(&derived[..16]);
        out
    }

    /// The tag of `covered` (a frame's header and payload) under this key.
    pub fn tag(&self, covered: &[u8]) -> [u8; TAG_LEN] {
        *blake3::keyed_hash(&self.0, covered).as_bytes()
    }

    /// Whether `tag` is the tag of `covered`, compared in constant time (`blake3::Hash`'s
    /// equality), so that the time taken tells an attacker nothing about the right tag.
    pub fn verify(&self, covered: &[u8], tag: &[u8]) -> bool {
        let Ok(tag) = <[u8; TAG_LEN]>::try_from(tag) else {
            return false;
        };
        blake3::keyed_hash(&self.0, covered) == blake3::Hash::from_bytes(tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_keys_parse_and_bad_ones_say_why_without_the_key() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF\n";
        let key = ClusterKey::from_hex(hex).unwrap();
        assert_eq!(key.0[1], 0x11);
        assert_eq!(key.0[31], 0xff);
        assert_eq!(format!("{key:?}"), "ClusterKey(..)");
        let short = ClusterKey::from_hex("0011").unwrap_err();
        assert!(
            short.contains("64 hexadecimal digits") && short.contains("found 4"),
            "{short}"
        );
        let bad = ClusterKey::from_hex(&"zz".repeat(32)).unwrap_err();
        assert!(bad.contains("character 1"), "{bad}");
        let dir = tempfile::tempdir().unwrap();
        let missing = ClusterKey::from_file(&dir.path().join("nope.key")).unwrap_err();
        assert!(
            missing.contains("nope.key") && missing.contains("cannot read"),
            "{missing}"
        );
    }

    /// `key_file` is read relative to the config file's directory; every problem is a
    /// config error naming the config file and the key's file or variable.
    #[test]
    fn configs_name_their_key_and_say_what_is_wrong_with_it() {
        use crate::Config;
        let dir = tempfile::tempdir().unwrap();
        let hex = "ab".repeat(KEY_LEN);
        std::fs::write(dir.path().join("cluster.key"), format!("{hex}\n")).unwrap();
        std::fs::write(dir.path().join("short.key"), "abcd").unwrap();
        let peers = r#""peers":[{"pid":1,"address":"127.0.0.1:7001"}]"#;
        let write = |name: &str, extra: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, format!("{{{peers}{extra}}}")).unwrap();
            path
        };
        let good = Config::load(write("good.json", r#","key_file":"cluster.key""#)).unwrap();
        assert_eq!(
            good.cluster_key(),
            Some(&ClusterKey::from_bytes([0xab; KEY_LEN]))
        );
        assert_eq!(
            Config::load(write("none.json", "")).unwrap().cluster_key(),
            None
        );
        let e = Config::load(write("short.json", r#","key_file":"short.key""#))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("short.json") && e.contains("short.key") && e.contains("found 4"),
            "{e}"
        );
        let e = Config::load(write("missing.json", r#","key_file":"gone.key""#))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("missing.json") && e.contains("gone.key") && e.contains("cannot read"),
            "{e}"
        );
        let e = Config::load(write(
            "env.json",
            r#","key_env":"CLUSTER_TEST_UNSET_KEY_VAR""#,
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("env.json") && e.contains("CLUSTER_TEST_UNSET_KEY_VAR"),
            "{e}"
        );
        let both = r#","key_file":"cluster.key","key_env":"X""#;
        let e = Config::load(write("both.json", both))
            .unwrap_err()
            .to_string();
        assert!(e.contains("choose one"), "{e}");
        // "mac": the fast tag, named; a misspelt one, without a key, or beside "encrypt"
        // is an error naming the field.
        let sip = Config::load(write(
            "sip.json",
            r#","key_file":"cluster.key","mac":"siphash-2-4""#,
        ))
        .unwrap();
        assert_eq!(sip.options().mac, crate::MacAlgorithm::SipHash24);
        assert_eq!(good.options().mac, crate::MacAlgorithm::Blake3);
        for (name, extra, says) in [
            (
                "typo.json",
                r#","key_file":"cluster.key","mac":"siphash""#,
                "\"blake3\" or \"siphash-2-4\"",
            ),
            (
                "keyless.json",
                r#","mac":"siphash-2-4""#,
                "\"mac\" is \"siphash-2-4\" but no key is",
            ),
            (
                "both-modes.json",
                r#","key_file":"cluster.key","mac":"siphash-2-4","encrypt":true"#,
                "remove one of the two",
            ),
        ] {
            let e = Config::load(write(name, extra)).unwrap_err().to_string();
            assert!(
                e.contains(name) && e.contains("mac") && e.contains(says),
                "{e}"
            );
        }
    }

    #[test]
    fn tags_check_only_under_the_same_key_and_bytes() {
        let a = ClusterKey::from_bytes([1; KEY_LEN]);
        let b = ClusterKey::from_bytes([2; KEY_LEN]);
        let tag = a.tag(b"frame");
        assert!(a.verify(b"frame", &tag));
        assert!(!a.verify(b"framE", &tag));
        assert!(!b.verify(b"frame", &tag));
        assert!(!a.verify(b"frame", &tag[1..]));
    }
}
