//! Outbound to Ocean: the sites and their clients, the outbox (what may be sent), its worker,
//! and the fetcher of referrals' documents.

pub mod client;
pub mod documents;
pub mod outbox;
pub mod sites;
pub mod transitions;
pub mod worker;
