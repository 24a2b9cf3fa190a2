//! Mutation fuzzing of the webhook, bounded and repeatable: the fixtures, mutated byte by byte
//! and structurally, each posted once. Whatever arrives, the answer is a 2xx or a 4xx with a
//! FHIR body, never a 5xx or a dropped connection, and what is acknowledged as stored is stored
//! byte for byte.

use referral_relay::domain::ReferralRef;

use crate::support::app::{FIXTURES, spawn_app};
use crate::support::fixtures::fixture;

/// A small deterministic generator (xorshift64*), so a failure names a seed that reproduces it.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n.max(1) as u64).unwrap()
    }
}

/// Bytes that make JSON interesting when dropped in anywhere.
const TOKENS: [&[u8]; 16] = [
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b"\\",
    b",",
    b":",
    b"\\ud800",
    b"1e400",
    b"-0.0E-999",
    b"null",
    b"\xEF\xBB\xBF",
    b"\xFF\xFE",
    b"\x00",
    b"\"resourceType\": \"Bundle\", ",
];

fn mutate(rng: &mut Rng, original: &[u8], other: &[u8]) -> Vec<u8> {
    let mut bytes = original.to_vec();
    for _ in 0..=rng.below(3) {
        let at = rng.below(bytes.len() + 1);
        match rng.below(7) {
            0 if at < bytes.len() => bytes[at] ^= 1 << rng.below(8),
            1 => bytes.insert(at, u8::try_from(rng.below(256)).unwrap()),
            2 => {
                let end = (at + rng.below(64)).min(bytes.len());
                bytes.drain(at..end);
            }
            3 => {
                let token = TOKENS[rng.below(TOKENS.len())];
                bytes.splice(at..at, token.iter().copied());
            }
            4 => {
                // A slice of another delivery, spliced in.
                let from = rng.below(other.len());
                let end = (from + rng.below(512)).min(other.len());
                bytes.splice(at..at, other[from..end].iter().copied());
            }
            5 => {
                // Deep nesting wherever it lands.
                let depth = 1 + rng.below(3000);
                let nested = [b"[".repeat(depth), b"1".to_vec(), b"]".repeat(depth)].concat();
                bytes.splice(at..at, nested);
            }
            _ => bytes.truncate(at),
        }
    }
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_deliveries_get_2xx_or_4xx_and_what_is_stored_is_exact() {
    let app = spawn_app().await;
    let mut corpus: Vec<Vec<u8>> = FIXTURES.iter().map(|name| fixture(name)).collect();
    for name in [
        "edge/bom.json",
        "edge/invalid-utf8.json",
        "edge/versioned-reference.json",
        "bad/no-referral-ref.json",
        "bad/deeply-nested.json",
    ] {
        corpus.push(fixture(name));
    }
    // FUZZ_SEED and FUZZ_CASES run a longer or different search by hand; CI runs this one.
    let seed = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_2026_1130_u64);
    let cases: usize = std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(400);
    let mut rng = Rng(seed);
    let (mut stored, mut refused) = (0, 0);
    for case in 0..cases {
        let original = &corpus[rng.below(corpus.len())];
        let other = &corpus[rng.below(corpus.len())];
        let body = mutate(&mut rng, original, other);
        let content_type = ["application/fhir+json", "application/json", "text/json"][rng.below(3)];
        let reply = app
            .post(
                "/fhir/default/$process-message",
                Some(content_type),
                body.clone(),
            )
            .await;
        let context = format!(
            "seed {seed:#x}, case {case}: {} {}",
            reply.status, reply.body
        );
        match reply.status {
            200 => {
                let header = reply.response_header();
                assert_eq!(header["resourceType"], "MessageHeader", "{context}");
                if reply
                    .response_note()
                    .is_none_or(|n| !n.contains("already stored"))
                {
                    stored += 1;
                    check_stored(&app, &body, &context).await;
                }
            }
            400 | 413 | 415 | 422 => {
                refused += 1;
                assert_eq!(reply.body["resourceType"], "OperationOutcome", "{context}");
                assert!(!reply.diagnostics().is_empty(), "{context}");
            }
            _ => panic!("{context}"),
        }
    }
    // The mutations reach both sides.
    assert!(
        stored > cases / 20 && refused > cases / 20,
        "stored {stored}, refused {refused}"
    );
    assert_eq!(app.get("/healthz").await.status, 200);
}

/// The latest version of the referral this delivery was filed under holds exactly its bytes.
async fn check_stored(app: &crate::support::app::TestApp, body: &[u8], context: &str) {
    let last = app.store.feed_end().await.unwrap();
    let events = app
        .store
        .events_after(last.saturating_sub(1), 1)
        .await
        .unwrap();
    let event = events
        .last()
        .unwrap_or_else(|| panic!("no feed entry: {context}"));
    let referral = ReferralRef::parse(event.referral.as_str()).unwrap();
    let payload = app
        .store
        .payload(&referral, event.version)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no payload: {context}"));
    assert_eq!(payload.as_ref(), body, "{context}");
}
