//! The shared vocabulary: validated identifiers and the summary of one delivery, under the
//! paths the rest of the crate names them by (`crate::domain::ReferralRef`,
//! `crate::domain::Summary`, ...).

mod change;
mod ids;
mod redact;
mod redirect;
mod summary;

pub use change::Change;
pub use ids::{EventCode, IntegrationName, InvalidId, ReferralRef, ServiceId, path_segment};
pub use redact::{is_code_like, redact_quoted};
pub use redirect::{RedirectError, RedirectUrl};
pub use summary::{Carried, DocumentLink, FieldChange, Part, Summary};
