//! The `/api/v1` API (`src/routes/v1/`): referrals, versions, the event feed, scoping, errors
//! and the OpenAPI document; the CSV export (its golden file in `golden/`); and what each
//! message Ocean sends makes of a referral as the API shows it, with what each version changed;
//! and the watch-list of referrals that need attention, each rule on each side of its threshold.

mod api;
mod export;
mod messages;
mod watch_list;
