//! The shared vocabulary: validated identifiers and the summary of one delivery.
//!
//! Each identifier is a newtype with a fallible constructor and a private field, so a value that
//! reaches the store or a key has already been checked once (parse, don't validate).

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a string was refused as an identifier.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidId {
    #[error("{kind} is empty")]
    Empty { kind: &'static str },
    #[error("{kind} is longer than {max} characters")]
    TooLong { kind: &'static str, max: usize },
    #[error("{kind} contains a control character")]
    ControlCharacter { kind: &'static str },
    #[error("{kind} may only contain letters, digits, '-' and '_'")]
    BadCharacter { kind: &'static str },
}

/// Checks the rules every identifier shares: trimmed, non-empty, bounded, no control characters
/// (which also keeps the NUL byte that separates key parts out of every key).
fn check_text(kind: &'static str, value: &str, max: usize) -> Result<String, InvalidId> {
    let value = value.trim();
    if value.is_empty() {
        return Err(InvalidId::Empty { kind });
    }
    if value.chars().count() > max {
        return Err(InvalidId::TooLong { kind, max });
    }
    if value.chars().any(char::is_control) {
        return Err(InvalidId::ControlCharacter { kind });
    }
    Ok(value.to_owned())
}

macro_rules! text_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Checks `value` and wraps it; surrounding white space is dropped.
            pub fn parse(value: &str) -> Result<Self, InvalidId> {
                check_text($kind, value, $max).map(Self)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                Self::parse(&raw).map_err(serde::de::Error::custom)
            }
        }
    };
}

text_id!(
    /// Ocean's reference for a referral (`id-ereferral-reference`), e.g. `TST-0011-AAAA`.
    ReferralRef,
    "referral reference",
    256
);
text_id!(
    /// The External Service ID an admin typed on a directory listing: the key deliveries are
    /// filed under.
    ServiceId,
    "External Service ID",
    256
);
text_id!(
    /// A message event code such as `add-service-request`. Unknown codes are valid: they are
    /// stored, not rejected.
    EventCode,
    "event code",
    128
);

/// The name of a configured integration; it appears in the webhook URL, so it is restricted to
/// URL-safe characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct IntegrationName(String);

impl IntegrationName {
    pub fn parse(value: &str) -> Result<Self, InvalidId> {
        const KIND: &str = "integration name";
        let value = check_text(KIND, value, 64)?;
        if !value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(InvalidId::BadCharacter { kind: KIND });
        }
        Ok(Self(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IntegrationName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for IntegrationName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// What one delivery says about its referral: the fields the API lists and the CSV export needs.
///
/// Every field is optional because Ocean's messages vary (an update may carry only a Task);
/// when a referral is updated, fields a newer delivery leaves out keep their earlier value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub service_request_status: Option<String>,
    pub task_status: Option<String>,
    pub task_status_reason: Option<String>,
    pub appointment_status: Option<String>,
    pub appointment_start: Option<String>,
    pub authored_on: Option<String>,
    pub patient_name: Option<String>,
    pub patient_phone: Option<String>,
    pub patient_email: Option<String>,
    pub referrer_name: Option<String>,
    pub referrer_professional_id: Option<String>,
    pub referring_site: Option<String>,
    pub recipient_listing: Option<String>,
    pub description: Option<String>,
    /// `ServiceRequest.note[].text`, as sent (Ocean sends HTML).
    #[serde(default)]
    pub notes: Vec<String>,
}

impl Summary {
    /// Fills the fields `self` lacks from `earlier`, so an update that omits, say, the Patient
    /// does not erase the name an earlier delivery gave.
    pub fn fill_from(&mut self, earlier: &Summary) {
        fn keep(new: &mut Option<String>, old: &Option<String>) {
            if new.is_none() {
                new.clone_from(old);
            }
        }
        keep(
            &mut self.service_request_status,
            &earlier.service_request_status,
        );
        keep(&mut self.task_status, &earlier.task_status);
        keep(&mut self.task_status_reason, &earlier.task_status_reason);
        keep(&mut self.appointment_status, &earlier.appointment_status);
        keep(&mut self.appointment_start, &earlier.appointment_start);
        keep(&mut self.authored_on, &earlier.authored_on);
        keep(&mut self.patient_name, &earlier.patient_name);
        keep(&mut self.patient_phone, &earlier.patient_phone);
        keep(&mut self.patient_email, &earlier.patient_email);
        keep(&mut self.referrer_name, &earlier.referrer_name);
        keep(
            &mut self.referrer_professional_id,
            &earlier.referrer_professional_id,
        );
        keep(&mut self.referring_site, &earlier.referring_site);
        keep(&mut self.recipient_listing, &earlier.recipient_listing);
        keep(&mut self.description, &earlier.description);
        if self.notes.is_empty() {
            self.notes.clone_from(&earlier.notes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_trimmed_and_checked() {
        assert_eq!(ReferralRef::parse("  TST-1 ").unwrap().as_str(), "TST-1");
        assert!(matches!(
            ReferralRef::parse(" "),
            Err(InvalidId::Empty { .. })
        ));
        assert!(matches!(
            ServiceId::parse("a\0b"),
            Err(InvalidId::ControlCharacter { .. })
        ));
        assert!(matches!(
            EventCode::parse(&"x".repeat(129)),
            Err(InvalidId::TooLong { .. })
        ));
        assert!(IntegrationName::parse("ocean-main_2").is_ok());
        assert!(matches!(
            IntegrationName::parse("a/b"),
            Err(InvalidId::BadCharacter { .. })
        ));
    }

    #[test]
    fn an_update_keeps_fields_it_does_not_carry() {
        let earlier = Summary {
            patient_name: Some("A".into()),
            task_status: Some("requested".into()),
            notes: vec!["n".into()],
            ..Summary::default()
        };
        let mut newer = Summary {
            task_status: Some("accepted".into()),
            ..Summary::default()
        };
        newer.fill_from(&earlier);
        assert_eq!(newer.patient_name.as_deref(), Some("A"));
        assert_eq!(newer.task_status.as_deref(), Some("accepted"));
        assert_eq!(newer.notes, vec!["n".to_string()]);
    }
}
