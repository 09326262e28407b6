//! Content digests, as toolgate writes them everywhere (policy pins, the plugin cache, the
//! reload log, grant tokens): sha256 in lowercase hex.

use sha2::{Digest, Sha256};

/// The `sha256` of some bytes, as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_empty_string_has_the_well_known_digest() {
        assert_eq!(
            super::sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
