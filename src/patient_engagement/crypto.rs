//! Decrypting what Ocean's Open API serves about a patient (`/svc/v1/patients/{ref}` and its
//! `/notes`): the body is encrypted with a one-time key, itself encrypted with the site's Shared
//! Encryption Key (SEK).
//!
//! Facts (public integration code, see OCEAN-API.md "Patient Engagement"): the SEK's key bytes
//! are the SEK string as UTF-8, right-padded with ASCII `'0'` to 16 characters; IVs are 16 bytes,
//! base64 in headers; the body is a base64 string or a JSON array of signed bytes. What is only
//! inferred is kept in one function each, so that a correction is one change:
//! [`cipher_mode`] (AES-CBC with PKCS#7 padding, the CryptoJS default), [`one_time_key`] (what
//! the decrypted one-time key's bytes are used as) and [`sek_key_len`] (SEKs longer than 16).

use aws_lc_rs::cipher::{
    AES_128, AES_192, AES_256, Algorithm, DecryptionContext, PaddedBlockDecryptingKey,
    UnboundCipherKey,
};
use aws_lc_rs::iv::FixedLength;
use base64::Engine;

/// Why an answer could not be decrypted. Never holds key material or plaintext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// A header or the body is not in the expected shape.
    #[error("{0}")]
    Malformed(String),
    /// Decryption failed (wrong key, wrong IV, or altered data): padding did not check out.
    #[error("{0} does not decrypt with the configured shared_encryption_key")]
    Decrypt(&'static str),
}

/// How long the SEK's key is: its UTF-8 length rounded up to an AES key size. The fact is
/// "padded to 16"; for a longer SEK (not seen) padding to the next AES key size, 24 or 32, is
/// inferred. `None` for more than 32 bytes (refused when the configuration is loaded).
pub fn sek_key_len(sek_len: usize) -> Option<usize> {
    match sek_len {
        0..=16 => Some(16),
        17..=24 => Some(24),
        25..=32 => Some(32),
        _ => None,
    }
}

/// The key bytes of a SEK: its UTF-8 bytes right-padded with ASCII `'0'` (not NUL) to
/// [`sek_key_len`].
///
/// # Errors
/// A SEK longer than 32 bytes.
pub fn sek_key(sek: &str) -> Result<Vec<u8>, CryptoError> {
    let len = sek_key_len(sek.len()).ok_or_else(|| {
        CryptoError::Malformed("the shared encryption key is longer than 32 bytes".into())
    })?;
    let mut key = sek.as_bytes().to_vec();
    key.resize(len, b'0');
    Ok(key)
}

/// What the decrypted one-time key is used as. INFERRED: public code hands it to the same
/// AES routine as the SEK; bytes of an AES key size (16, 24, 32) are taken as the key itself,
/// anything else is read as a UTF-8 string and padded like the SEK ([`sek_key`]). A 16-character
/// ASCII string gives the same key either way.
///
/// # Errors
/// Neither an AES key size nor a UTF-8 string of at most 32 bytes: [`CryptoError::Decrypt`],
/// since that is what a wrong SEK gives when its padding happens to check out (about one time
/// in 256), and a corrected SEK decrypts it.
pub fn one_time_key(decrypted: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if matches!(decrypted.len(), 16 | 24 | 32) {
        return Ok(decrypted.to_vec());
    }
    std::str::from_utf8(decrypted)
        .ok()
        .and_then(|text| sek_key(text).ok())
        .ok_or(CryptoError::Decrypt("oneTimeKey"))
}

/// The block cipher mode. INFERRED: AES in CBC mode with PKCS#7 padding (CryptoJS's default,
/// which the public integration code uses); the key's length picks AES-128, -192 or -256.
fn cipher_mode(key: &[u8]) -> Result<PaddedBlockDecryptingKey, CryptoError> {
    let algorithm: &'static Algorithm = match key.len() {
        16 => &AES_128,
        24 => &AES_192,
        32 => &AES_256,
        _ => {
            return Err(CryptoError::Malformed(
                "a key is not an AES key size".into(),
            ));
        }
    };
    UnboundCipherKey::new(algorithm, key)
        .and_then(PaddedBlockDecryptingKey::cbc_pkcs7)
        .map_err(|_| CryptoError::Malformed("a key cannot be used with AES".into()))
}

/// Decrypts `ciphertext` with `key` and `iv` (what is decrypted is named by `what`).
fn decrypt(
    key: &[u8],
    iv: [u8; 16],
    ciphertext: &[u8],
    what: &'static str,
) -> Result<Vec<u8>, CryptoError> {
    if ciphertext.is_empty() || !ciphertext.len().is_multiple_of(16) {
        return Err(CryptoError::Malformed(format!(
            "{what} is not a whole number of AES blocks"
        )));
    }
    let cipher = cipher_mode(key)?;
    let mut buffer = ciphertext.to_vec();
    let plain = cipher
        .decrypt(&mut buffer, DecryptionContext::Iv128(FixedLength::from(iv)))
        .map_err(|_| CryptoError::Decrypt(what))?;
    Ok(plain.to_vec())
}

/// Standard base64, with or without padding, whitespace ignored.
fn base64_decode(text: &str, what: &str) -> Result<Vec<u8>, CryptoError> {
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    engine
        .decode(compact.as_bytes())
        .map_err(|_| CryptoError::Malformed(format!("{what} is not base64")))
}

/// An IV from a header: 16 bytes, base64.
///
/// # Errors
/// Not base64, or not 16 bytes.
pub fn iv(header: &str, what: &str) -> Result<[u8; 16], CryptoError> {
    base64_decode(header, what)?
        .try_into()
        .map_err(|_| CryptoError::Malformed(format!("{what} is not 16 bytes")))
}

/// The ciphertext of a body, in either encoding Ocean uses: a JSON array of signed bytes
/// (`[-12, 100, ...]`; 0..=255 is taken too), or base64 text, bare or as a JSON string.
///
/// # Errors
/// Neither encoding.
pub fn body_bytes(body: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| CryptoError::Malformed("the body is not text".into()))?
        .trim();
    if text.starts_with('[') {
        let numbers: Vec<i64> = serde_json::from_str(text).map_err(|_| {
            CryptoError::Malformed("the body is a JSON array, but not of numbers".into())
        })?;
        return numbers
            .into_iter()
            .map(|n| match n {
                -128..=-1 => u8::try_from(n + 256).ok(),
                0..=255 => u8::try_from(n).ok(),
                _ => None,
            })
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(|| {
                CryptoError::Malformed("the body's array holds a number that is not a byte".into())
            });
    }
    if text.starts_with('"') {
        let inner: String = serde_json::from_str(text)
            .map_err(|_| CryptoError::Malformed("the body is not a JSON string".into()))?;
        return base64_decode(&inner, "the body");
    }
    base64_decode(text, "the body")
}

/// What one answer of the Open API carries to decrypt its body: the encrypted one-time key and
/// its IV, and the body's IV (headers `oneTimeKey`, `oneTimeKeyIv` or else `iv`, and `iv`).
#[derive(Debug, Clone)]
pub struct Envelope<'a> {
    pub one_time_key: &'a str,
    /// `oneTimeKeyIv`; when absent the body's IV is used for the key too (the patient answer).
    pub one_time_key_iv: Option<&'a str>,
    pub iv: &'a str,
}

/// Decrypts an answer's body with the SEK's key bytes ([`sek_key`]): the one-time key first,
/// then the body with it.
///
/// # Errors
/// A malformed header or body, or one that does not decrypt.
pub fn open(sek: &[u8], envelope: &Envelope<'_>, body: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let body_iv = iv(envelope.iv, "the iv header")?;
    let key_iv = match envelope.one_time_key_iv {
        Some(header) => iv(header, "the oneTimeKeyIv header")?,
        None => body_iv,
    };
    let encrypted_key = base64_decode(envelope.one_time_key, "the oneTimeKey header")?;
    let key = one_time_key(&decrypt(sek, key_iv, &encrypted_key, "the oneTimeKey")?)?;
    decrypt(&key, body_iv, &body_bytes(body)?, "the body")
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::cipher::{EncryptionContext, PaddedBlockEncryptingKey};

    fn encrypt(key: &[u8], iv: [u8; 16], plain: &[u8]) -> Vec<u8> {
        let algorithm = match key.len() {
            16 => &AES_128,
            24 => &AES_192,
            _ => &AES_256,
        };
        let cipher =
            PaddedBlockEncryptingKey::cbc_pkcs7(UnboundCipherKey::new(algorithm, key).unwrap())
                .unwrap();
        let mut data = plain.to_vec();
        cipher
            .less_safe_encrypt(&mut data, EncryptionContext::Iv128(FixedLength::from(iv)))
            .unwrap();
        data
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    #[test]
    fn the_sek_is_padded_with_ascii_zeros() {
        assert_eq!(sek_key("abc").unwrap(), b"abc0000000000000");
        assert_eq!(sek_key("0123456789abcdef").unwrap(), b"0123456789abcdef");
        assert_eq!(sek_key("0123456789abcdefg").unwrap().len(), 24);
        assert_eq!(sek_key(&"x".repeat(30)).unwrap().len(), 32);
        assert!(sek_key(&"x".repeat(33)).is_err());
        // Multibyte characters count as their UTF-8 bytes.
        assert_eq!(sek_key("clé").unwrap(), "clé000000000000".as_bytes());
    }

    #[test]
    fn a_patient_answer_decrypts_with_one_iv_and_a_note_with_two() {
        let sek = sek_key("Sek-Test-7").unwrap();
        let one_time = b"OneTimeKey-12345";
        let (iv1, iv2) = ([7u8; 16], [9u8; 16]);
        let plain = "{\"demographics\":{\"firstName\":\"Zoë\"}}".as_bytes();
        // The patient: one `iv` for the key and the body; the body as base64.
        let key_header = b64(&encrypt(&sek, iv1, one_time));
        let body = b64(&encrypt(one_time, iv1, plain));
        let patient = Envelope {
            one_time_key: &key_header,
            one_time_key_iv: None,
            iv: &b64(&iv1),
        };
        assert_eq!(open(&sek, &patient, body.as_bytes()).unwrap(), plain);
        // Quoted as a JSON string, too.
        let quoted = format!("\"{body}\"");
        assert_eq!(open(&sek, &patient, quoted.as_bytes()).unwrap(), plain);
        // The note: the key has its own IV; the body as an array of signed bytes.
        let key_header = b64(&encrypt(&sek, iv2, one_time));
        let signed: Vec<i8> = encrypt(one_time, iv1, plain)
            .into_iter()
            .map(|b| b as i8)
            .collect();
        let array = serde_json::to_vec(&signed).unwrap();
        assert!(array.contains(&b'-'));
        let note = Envelope {
            one_time_key: &key_header,
            one_time_key_iv: Some(&b64(&iv2)),
            iv: &b64(&iv1),
        };
        assert_eq!(open(&sek, &note, &array).unwrap(), plain);
        // With the body's IV for the key, it does not decrypt (or decrypts to another key).
        let wrong = Envelope {
            one_time_key_iv: None,
            ..note.clone()
        };
        assert!(open(&sek, &wrong, &array).is_err());
    }

    #[test]
    fn a_wrong_sek_and_malformed_input_are_errors_not_panics() {
        let sek = sek_key("right").unwrap();
        let iv = [1u8; 16];
        let key_header = b64(&encrypt(&sek, iv, b"k-16-bytes-long!"));
        let body = b64(&encrypt(b"k-16-bytes-long!", iv, b"{}"));
        let envelope = Envelope {
            one_time_key: &key_header,
            one_time_key_iv: None,
            iv: &b64(&iv),
        };
        let other = sek_key("wrong").unwrap();
        assert!(open(&other, &envelope, body.as_bytes()).is_err());
        for bad in [&b""[..], b"[1, 2, 300]", b"[\"a\"]", b"%%%", b"AAAA"] {
            assert!(open(&sek, &envelope, bad).is_err(), "{bad:?}");
        }
        let short_iv = Envelope {
            iv: "AAAA",
            ..envelope.clone()
        };
        assert!(matches!(
            open(&sek, &short_iv, body.as_bytes()),
            Err(CryptoError::Malformed(_))
        ));
    }

    #[test]
    fn the_one_time_key_is_raw_bytes_of_a_key_size_or_text_padded_like_the_sek() {
        assert_eq!(one_time_key(&[200u8; 32]).unwrap(), vec![200u8; 32]);
        assert_eq!(one_time_key(b"short").unwrap(), b"short00000000000");
        // What a wrong SEK decrypts when its padding happens to check out: retried as a key
        // that does not decrypt, not given up as a malformed answer.
        assert_eq!(
            one_time_key(&[0xff; 5]),
            Err(CryptoError::Decrypt("oneTimeKey"))
        );
    }
}
