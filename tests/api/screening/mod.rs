//! Screening referrals before they are sent: the CDS Hooks services Ocean's `order-sign` hook
//! calls (each rule's cards, what is answered for bad input and in bounded time), who may call
//! them, and the counts they keep, in the store and on the console's page. Runs on both
//! backends (the page too: it reads the counts from the store).

mod auth;
mod console;
mod counts;
mod service;
