//! The web console (`src/routes/console/`): over plain HTTP requests (signing in, the referral
//! pages, actions and admin pages, the watch-list, the patient forms, signing in through an OpenID provider in `oidc.rs`) and in
//! headless Chromium (`browser.rs`). The
//! signed-in visitor they share is in `support::console`.

mod admin;
mod browser;
mod oidc;
mod oidc_browser;
mod patient_forms;
mod referrals;
mod sign_in;
mod watch_list;
