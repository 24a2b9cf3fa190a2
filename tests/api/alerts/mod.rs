//! Alerts: telling a person when something needs one. `channels`: `alert-test` and the
//! watch-list summary; `conditions`: each condition triggered
//! for real and what reaches a person; `email`: the e-mail channel against a real SMTP server
//! on loopback.

mod channels;
mod conditions;
mod email;
