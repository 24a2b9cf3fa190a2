//! SHA-256 (FIPS 180-4, through aws-lc-rs), the one digest the relay takes: of bodies and files
//! (their hashes in records, manifests and the dedup key), of key material (key ids, advisory
//! lock keys), of certificates (pins) and of references (file names). Lower-case hex where a
//! hash is written out.

/// The SHA-256 of `bytes`, 32 bytes.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    let mut out = [0; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// The SHA-256 of `bytes` in lower-case hex (64 characters).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha256(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_of_abc_is_the_fips_180_example() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(sha256(b"")[..4], [0xe3, 0xb0, 0xc4, 0x42]);
    }
}
