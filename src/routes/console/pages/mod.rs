//! The console's referral pages: the list with its filters, one referral with its versions, and
//! the watch-list; and the patient forms.

mod list;
mod patient_forms;
mod referral;
mod watch_list;

use axum::extract::State;
use axum::response::{IntoResponse, Redirect, Response};

use crate::state::AppState;

pub use list::referrals;
pub use patient_forms::{patient_form, patient_forms};
pub use referral::{document, raw_version, referral};
pub use watch_list::watch_list_page;

/// `/console`: the referrals, or the sign-in page for someone not signed in.
pub async fn home(State(state): State<AppState>) -> Response {
    if state.config().console.users.is_empty() {
        return Redirect::to("/console/login").into_response();
    }
    Redirect::to("/console/referrals").into_response()
}
