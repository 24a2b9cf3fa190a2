//! The web console (`src/routes/console/`): over plain HTTP requests (`http.rs`: sign-in,
//! sessions, form tokens, security headers, scoping, every page and action) and in headless
//! Chromium (`browser.rs`). The signed-in visitor they share is in `support::console`.

mod browser;
mod http;
