//! Receiving deliveries (`src/routes/webhook/`, the inbound schemes of `src/auth/`, the message
//! reading of `src/fhir/`): every fixture stored under its referral, event and service id;
//! duplicates; every refusal with its 4xx; what real senders send at the internet edge;
//! mutation fuzzing; and each authentication scheme a sender may use, the token endpoint too.

mod auth;
mod dedup;
mod edge;
mod fuzz;
mod ingest;
mod rejections;
