//! Screening counts in the embedded store: tree `screening_tallies`, key
//! `YYYY-MM-DD \0 service id \0 rule \0 indicator`, value the count (u64, big-endian). Adds
//! go through the one writer, so two flushes never lose each other's counts.

use async_trait::async_trait;
use time::{Date, Month};

use super::handle::SledStore;
use super::trees::unavailable;
use crate::store::error::StoreError;
use crate::store::record::read_u64;
use crate::store::screening::{ScreeningStore, ScreeningTally};

fn day_key(day: Date) -> String {
    format!(
        "{:04}-{:02}-{:02}",
        day.year(),
        u8::from(day.month()),
        day.day()
    )
}

fn key(tally: &ScreeningTally) -> Vec<u8> {
    [
        day_key(tally.day).as_str(),
        &tally.service_id,
        &tally.rule,
        &tally.indicator,
    ]
    .join("\0")
    .into_bytes()
}

/// The tally a key and value hold.
pub(in crate::store) fn decode(key: &[u8], value: &[u8]) -> Result<ScreeningTally, StoreError> {
    let corrupt = || StoreError::corrupt("a screening count's key does not decode");
    let text = std::str::from_utf8(key).map_err(|_| corrupt())?;
    let mut parts = text.split('\0');
    let (Some(day), Some(service_id), Some(rule), Some(indicator), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(corrupt());
    };
    let number = |range: std::ops::Range<usize>| day.get(range).and_then(|d| d.parse::<u16>().ok());
    let day = (|| {
        let month = Month::try_from(u8::try_from(number(5..7)?).ok()?).ok()?;
        let year = i32::from(number(0..4)?);
        Date::from_calendar_date(year, month, u8::try_from(number(8..10)?).ok()?).ok()
    })()
    .ok_or_else(corrupt)?;
    Ok(ScreeningTally {
        day,
        service_id: service_id.to_owned(),
        rule: rule.to_owned(),
        indicator: indicator.to_owned(),
        count: read_u64(value)?,
    })
}

#[async_trait]
impl ScreeningStore for SledStore {
    async fn add_screening_tallies(&self, tallies: &[ScreeningTally]) -> Result<(), StoreError> {
        if tallies.is_empty() {
            return Ok(());
        }
        let adds: Vec<(Vec<u8>, u64)> = tallies.iter().map(|t| (key(t), t.count)).collect();
        let open = self.open_db()?;
        let result = open
            .writer
            .write(move |t| {
                let tree = &t.trees.screening_tallies;
                for (key, count) in adds {
                    let kept = match tree.get(&key).map_err(unavailable)? {
                        Some(value) => read_u64(&value)?,
                        None => 0,
                    };
                    tree.insert(key, &kept.saturating_add(count).to_be_bytes())
                        .map_err(unavailable)?;
                }
                Ok(())
            })
            .await;
        self.checked(result)
    }

    async fn screening_tallies(&self, since: Date) -> Result<Vec<ScreeningTally>, StoreError> {
        let from = day_key(since).into_bytes();
        self.off_worker(move |open| {
            open.trees
                .screening_tallies
                .range(from..)
                .map(|item| {
                    let (key, value) = item.map_err(unavailable)?;
                    decode(&key, &value)
                })
                .collect()
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    #[test]
    fn keys_decode_to_what_they_were_made_of() {
        let tally = ScreeningTally {
            day: date!(2026 - 12 - 07),
            service_id: "CARDIO RAPID/01".into(),
            rule: "age".into(),
            indicator: "warning".into(),
            count: 3,
        };
        assert_eq!(decode(&key(&tally), &3u64.to_be_bytes()).unwrap(), tally);
        assert!(decode(b"2026-12-07\0a\0b", &1u64.to_be_bytes()).is_err());
        assert!(decode(b"2026-13-07\0a\0b\0c", &1u64.to_be_bytes()).is_err());
    }
}
