//! Signing as a sender does: the Standard Webhooks headers for a delivery to an integration
//! with `auth = { scheme = "hmac", ... }`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// Standard Webhooks headers for `body` signed with `secret` at `timestamp`.
pub fn signed(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Vec<(String, String)> {
    let key = STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .unwrap();
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &key);
    let mut message = format!("{id}.{timestamp}.").into_bytes();
    message.extend_from_slice(body);
    let signature = STANDARD.encode(aws_lc_rs::hmac::sign(&key, &message).as_ref());
    vec![
        ("webhook-id".into(), id.into()),
        ("webhook-timestamp".into(), timestamp.to_string()),
        ("webhook-signature".into(), format!("v1,{signature}")),
    ]
}
