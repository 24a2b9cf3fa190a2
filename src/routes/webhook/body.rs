//! What the webhook does with a request body before the FHIR layer sees it: the media type is
//! checked, the body read within its size and time limits (and, when the sender is not yet
//! authenticated, within the shared budget for such bodies), and its content coding undone.

use std::io::Read;
use std::time::Duration;

use crate::auth::budget::Held;
use axum::body::Body;
use axum::http::{HeaderMap, header};
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;

use crate::error::AppError;

/// JSON media types FHIR servers have used: `application/fhir+json` (STU3 and later),
/// `application/json+fhir` (DSTU2 and before), and plain JSON.
const JSON_TYPES: [&str; 4] = [
    "application/fhir+json",
    "application/json+fhir",
    "application/json",
    "text/json",
];

/// Checks `Content-Type`: a FHIR JSON media type, UTF-8 when a charset is named, R4 when a
/// `fhirVersion` is named (FHIR's mime-type parameter). A request without one is read as JSON
/// (RFC 9110 §8.3 lets a recipient examine the data). Anything else is 415.
pub fn check_media_type(headers: &HeaderMap) -> Result<(), AppError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let unsupported = || {
        AppError::UnsupportedMediaType(
            "unsupported Content-Type; send application/fhir+json (or application/json)".into(),
        )
    };
    let media: mime::Mime = value
        .to_str()
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or_else(unsupported)?;
    if !JSON_TYPES.contains(&media.essence_str()) {
        return Err(unsupported());
    }
    if let Some(charset) = media.get_param(mime::CHARSET)
        && !charset.as_str().eq_ignore_ascii_case("utf-8")
        && !charset.as_str().eq_ignore_ascii_case("utf8")
    {
        return Err(AppError::UnsupportedMediaType(
            "unsupported charset; FHIR JSON is UTF-8".into(),
        ));
    }
    if let Some(version) = media.get_param("fhirVersion")
        && !version.as_str().starts_with("4.0")
    {
        return Err(AppError::UnsupportedMediaType(
            "unsupported fhirVersion; this endpoint takes FHIR R4 (fhirVersion=4.0)".into(),
        ));
    }
    Ok(())
}

/// A content coding the webhook undoes (RFC 9110 §8.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Gzip,
    /// The zlib format (RFC 1950), as RFC 9110 defines `deflate`; raw deflate data, which some
    /// senders send under that name, is read too.
    Deflate,
}

/// The codings of `Content-Encoding`, in the order they were applied (`identity` dropped).
/// A coding the relay does not decode is 415, and the answer names the ones it does.
pub fn content_codings(headers: &HeaderMap) -> Result<Vec<Coding>, AppError> {
    let mut codings = Vec::new();
    for value in headers.get_all(header::CONTENT_ENCODING) {
        let value = value.to_str().map_err(|_| unknown_coding())?;
        for coding in value.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            match coding.to_ascii_lowercase().as_str() {
                "identity" => {}
                "gzip" | "x-gzip" => codings.push(Coding::Gzip),
                "deflate" => codings.push(Coding::Deflate),
                _ => return Err(unknown_coding()),
            }
        }
    }
    Ok(codings)
}

fn unknown_coding() -> AppError {
    AppError::UnsupportedEncoding(format!(
        "unsupported Content-Encoding; send the body as is, or as {}",
        crate::error::ACCEPTED_ENCODINGS
    ))
}

/// The declared length of the body, when it is declared.
pub fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Longest pause between two pieces of a body whose sender is not authenticated yet: an upload
/// that stalls gives its share of the budget back soon instead of holding it for the whole
/// body timeout.
const UNAUTHENTICATED_PAUSE: Duration = Duration::from_secs(10);

/// Reads a whole body within `limit` bytes and `timeout`. With an `account` (the sender is not
/// authenticated yet), the bytes count against the budget as they arrive (a declared length
/// takes nothing until bytes come) and pauses longer than [`UNAUTHENTICATED_PAUSE`] end the
/// upload; a body the budget cannot hold is 503.
pub async fn read(
    body: Body,
    limit: usize,
    timeout: Duration,
    declared: Option<u64>,
    mut account: Option<&mut Held>,
) -> Result<Bytes, AppError> {
    let capacity = match account {
        // Allocated as it comes, for a sender nobody knows yet.
        Some(_) => 0,
        None => declared.map_or(0, |d| usize::try_from(d).unwrap_or(limit).min(limit)),
    };
    let stalled = || AppError::Timeout {
        secs: UNAUTHENTICATED_PAUSE.as_secs(),
    };
    let reading = async {
        let mut body = body;
        let mut buffer = BytesMut::with_capacity(capacity);
        loop {
            let frame = match account {
                Some(_) => tokio::time::timeout(UNAUTHENTICATED_PAUSE, body.frame())
                    .await
                    .map_err(|_| stalled())?,
                None => body.frame().await,
            };
            let Some(frame) = frame else {
                break;
            };
            let frame = frame.map_err(|_| {
                AppError::BadRequest("the request body could not be read completely".into())
            })?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if buffer.len() + data.len() > limit {
                return Err(AppError::PayloadTooLarge { limit });
            }
            if let Some(account) = account.as_deref_mut() {
                account.take(data.len())?;
            }
            buffer.extend_from_slice(&data);
        }
        Ok(buffer.freeze())
    };
    tokio::time::timeout(timeout, reading)
        .await
        .map_err(|_| AppError::Timeout {
            secs: timeout.as_secs(),
        })?
}

/// Undoes `codings` (applied in this order) off the async workers, refusing a result longer
/// than `limit` bytes: the size limit is on the decoded body, so a small compressed bomb is a
/// 413, found without ever holding more than `limit` bytes. With an `account`, the decoded
/// bytes count against the budget as they come out (the account is handed back).
pub async fn decode(
    encoded: Bytes,
    codings: Vec<Coding>,
    limit: usize,
    mut account: Option<Held>,
) -> Result<(Bytes, Option<Held>), AppError> {
    if codings.is_empty() {
        return Ok((encoded, account));
    }
    tokio::task::spawn_blocking(move || {
        let decoded = decode_all(encoded, &codings, limit, account.as_mut())?;
        Ok((decoded, account))
    })
    .await
    .map_err(|e| AppError::Internal(e.into()))?
}

fn decode_all(
    encoded: Bytes,
    codings: &[Coding],
    limit: usize,
    mut account: Option<&mut Held>,
) -> Result<Bytes, AppError> {
    let mut bytes = encoded;
    for coding in codings.iter().rev() {
        bytes = decode_one(&bytes, *coding, limit, account.as_deref_mut())?;
    }
    Ok(bytes)
}

/// Bytes decoded at a time.
const DECODE_CHUNK: usize = 64 * 1024;

fn decode_one(
    encoded: &[u8],
    coding: Coding,
    limit: usize,
    mut account: Option<&mut Held>,
) -> Result<Bytes, AppError> {
    let name = match coding {
        Coding::Gzip => "gzip",
        Coding::Deflate => "deflate",
    };
    let invalid = || {
        AppError::BadRequest(format!(
            "the body is not valid {name} data, as its Content-Encoding says"
        ))
    };
    let mut bounded = |reader: &mut dyn Read| -> Result<Bytes, AppError> {
        let mut out = Vec::new();
        let mut chunk = vec![0u8; DECODE_CHUNK];
        loop {
            let n = reader.read(&mut chunk).map_err(|_| invalid())?;
            if n == 0 {
                return Ok(Bytes::from(out));
            }
            if out.len() + n > limit {
                return Err(AppError::PayloadTooLarge { limit });
            }
            if let Some(account) = account.as_deref_mut() {
                account.take(n)?;
            }
            out.extend_from_slice(&chunk[..n]);
        }
    };
    match coding {
        Coding::Gzip => bounded(&mut flate2::read::MultiGzDecoder::new(encoded)),
        Coding::Deflate => match bounded(&mut flate2::read::ZlibDecoder::new(encoded)) {
            // Not zlib: raw deflate data, which some senders send under this name.
            Err(AppError::BadRequest(_)) => {
                bounded(&mut flate2::read::DeflateDecoder::new(encoded))
            }
            other => other,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn with(name: header::HeaderName, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, value.parse().unwrap());
        h
    }

    #[test]
    fn fhir_json_media_types_of_every_version_are_taken() {
        for ok in [
            "application/fhir+json",
            "application/fhir+json; charset=UTF-8",
            "application/fhir+json;fhirVersion=4.0",
            "application/json+fhir",
            "Application/JSON; charset=utf-8",
            "text/json",
        ] {
            assert!(
                check_media_type(&with(header::CONTENT_TYPE, ok)).is_ok(),
                "{ok}"
            );
        }
        assert!(check_media_type(&HeaderMap::new()).is_ok());
        for refused in [
            "application/fhir+xml",
            "text/plain",
            "application/x-www-form-urlencoded",
            "application/fhir+json; charset=utf-16",
            "application/fhir+json; fhirVersion=3.0",
            "not a media type",
        ] {
            assert!(
                matches!(
                    check_media_type(&with(header::CONTENT_TYPE, refused)),
                    Err(AppError::UnsupportedMediaType(_))
                ),
                "{refused}"
            );
        }
    }

    #[test]
    fn codings_are_listed_in_order_and_unknown_ones_refused() {
        let codings = |v: &str| content_codings(&with(header::CONTENT_ENCODING, v));
        assert_eq!(codings("gzip").unwrap(), vec![Coding::Gzip]);
        assert_eq!(
            codings("deflate, identity, X-GZIP").unwrap(),
            vec![Coding::Deflate, Coding::Gzip]
        );
        assert!(codings("identity").unwrap().is_empty());
        assert!(matches!(
            codings("br"),
            Err(AppError::UnsupportedEncoding(_))
        ));
        assert!(matches!(
            codings("gzip, zstd"),
            Err(AppError::UnsupportedEncoding(_))
        ));
    }

    #[test]
    fn bodies_decode_within_the_limit_and_bombs_are_refused() {
        let plain = b"{\"resourceType\": \"Bundle\"}".repeat(10);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&plain).unwrap();
        let gz = Bytes::from(gz.finish().unwrap());
        let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        zlib.write_all(&gz).unwrap();
        let both = Bytes::from(zlib.finish().unwrap());
        let decoded = decode_all(both, &[Coding::Gzip, Coding::Deflate], 4096, None).unwrap();
        assert_eq!(decoded.as_ref(), plain.as_slice());
        let mut raw =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        raw.write_all(&plain).unwrap();
        let raw = Bytes::from(raw.finish().unwrap());
        assert_eq!(
            decode_all(raw, &[Coding::Deflate], 4096, None)
                .unwrap()
                .as_ref(),
            plain.as_slice()
        );

        let mut bomb = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        bomb.write_all(&vec![b' '; 10 << 20]).unwrap();
        let bomb = Bytes::from(bomb.finish().unwrap());
        assert!(bomb.len() < 64 * 1024);
        assert!(matches!(
            decode_all(bomb, &[Coding::Gzip], 1 << 20, None),
            Err(AppError::PayloadTooLarge { .. })
        ));
        assert!(matches!(
            decode_all(Bytes::from_static(b"not gzip"), &[Coding::Gzip], 4096, None),
            Err(AppError::BadRequest(m)) if m.contains("gzip")
        ));
    }
}
