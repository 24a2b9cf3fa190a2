//! The backup page: Ocean's backup export form (start and end date, "export unexported
//! referrals only", "mark referrals exported"), a count of what matches before exporting, and
//! the CSV download through the same export pipeline as the API (marks only once the whole
//! file was taken; the `EXPORTED_REFERRALS` audit entry names the user).

use axum::extract::State;
use axum::response::Response;
use serde::{Deserialize, Serialize};

use super::session::ConsoleUser;
use super::templates::render;
use super::views::day;
use super::{ConsoleForm, PageError};
use crate::domain::ServiceId;
use crate::error::AppError;
use crate::export::{ExportFilter, ExportRequest};
use crate::routes::stream::stream_export;
use crate::state::AppState;

/// The form's fields, as posted (checkboxes are present when ticked).
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct BackupForm {
    #[serde(default, skip_serializing)]
    csrf: Option<String>,
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    #[serde(default)]
    service_id: String,
    #[serde(default, with = "checkbox")]
    unexported_only: bool,
    #[serde(default, with = "checkbox")]
    mark_exported: bool,
    #[serde(default, with = "checkbox")]
    excel: bool,
}

/// An HTML checkbox: sent (as `on`) when ticked, absent otherwise.
mod checkbox {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
        let value = String::deserialize(d)?;
        Ok(!value.is_empty())
    }

    pub fn serialize<S: Serializer>(ticked: &bool, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bool(*ticked)
    }
}

impl BackupForm {
    /// The export the form asks for, for `user`.
    fn request(&self, user: &ConsoleUser) -> Result<ExportRequest, AppError> {
        let service = if self.service_id.trim().is_empty() {
            None
        } else {
            let s = ServiceId::parse(self.service_id.trim())
                .map_err(|e| AppError::BadRequest(format!("service: {e}")))?;
            Some(user.scope().service(s)?)
        };
        Ok(ExportRequest {
            filter: ExportFilter {
                from: day("start date", &self.from, false)?,
                to: day("end date", &self.to, true)?,
                service,
                unexported_only: self.unexported_only,
            },
            mark_exported: self.mark_exported,
            excel: self.excel,
            actor: user.actor(),
        })
    }
}

fn page(user: &ConsoleUser, form: &BackupForm, count: Option<usize>) -> Response {
    render(
        "backup.html",
        minijinja::context! {
            section => "backup",
            form => form,
            count => count,
            ..user.header()
        },
    )
}

/// The form, with the weekly routine ticked: unexported only, marked.
pub async fn form(user: ConsoleUser) -> Response {
    let form = BackupForm {
        unexported_only: true,
        mark_exported: true,
        ..BackupForm::default()
    };
    page(&user, &form, None)
}

/// How many referrals the form's export would hold.
pub async fn count(
    State(state): State<AppState>,
    user: ConsoleUser,
    ConsoleForm(form): ConsoleForm<BackupForm>,
) -> Result<Response, PageError> {
    user.check_csrf(form.csrf.as_deref())?;
    let request = form.request(&user)?;
    let scope = user.scope();
    let matching =
        crate::export::count(state.store.as_ref(), &request.filter, |r| scope.sees(r)).await?;
    Ok(page(&user, &form, Some(matching)))
}

/// The CSV, streamed as the API's export is.
pub async fn export(
    State(state): State<AppState>,
    user: ConsoleUser,
    ConsoleForm(form): ConsoleForm<BackupForm>,
) -> Result<Response, PageError> {
    user.check_csrf(form.csrf.as_deref())?;
    let request = form.request(&user)?;
    let scope = user.scope();
    Ok(stream_export(&state, request, move |r| scope.sees(r)))
}
