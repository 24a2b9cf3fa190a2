//! The monitor: every `alerts.check_secs` it looks at the conditions, files an alert for each
//! that started or cleared since the last look (and for each event), and, as often as
//! `alerts.summary_every_secs`, a summary of the watch-list.
//!
//! Which conditions hold is kept in the store (the latest record of each key), read at start:
//! a restart neither repeats a start nor forgets to clear. Replicas sharing a store each look
//! for themselves; before filing, a replica reads the condition's latest record, so one that
//! another replica announced is not announced again.
//!
//! When the store cannot write, alerts cannot be filed: they are kept in memory and sent from
//! there by every channel (retried at every look), then filed once the store takes writes
//! again; their records name the channels that had them, and nothing is queued for those.
//! Filing resumes where it stopped (see [`Filing`]), so an answer lost on the way neither
//! files nor sends an alert twice.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::watch;

use super::conditions::{Condition, StoreTrouble, look};
use super::{Alerts, Filing, record_ref};
use crate::config::Config;
use crate::signals::Signals;
use crate::store::{ALERTS_QUEUE, AlertPhase, AlertRecord, Store, StoreHealth};

/// Bound on the store's answer to one look's write check, beyond the store's own bounds (which
/// end a silent connection rather than leave it in the pool).
const STORE_CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// Looks at the conditions and files alerts; see the module's documentation.
pub struct Monitor {
    pub store: Arc<dyn Store>,
    pub alerts: Alerts,
    pub config: Arc<Config>,
    pub signals: Arc<Signals>,
    /// Where alerts not filed yet are kept across a restart (see [`SPOOL`]); `None`: in
    /// memory only.
    pub spool: Option<std::path::PathBuf>,
}

/// The file in the data dir that holds alerts sent from memory and not filed yet, so that a
/// restart before the store is back still files them (and clears what they started). Best
/// effort: on a full disk it may not be written either.
pub const SPOOL: &str = "alerts-unfiled.json";

/// What the monitor keeps between looks.
#[derive(Default)]
struct Memory {
    /// The started record of each condition holding, by key.
    holding: BTreeMap<String, AlertRecord>,
    /// Whether `holding` was read from the store yet.
    loaded: bool,
    unfiled: Vec<Filing>,
    trouble: Option<StoreTrouble>,
    last_summary: Option<OffsetDateTime>,
}

impl Monitor {
    /// Runs until `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let every = Duration::from_secs(self.alerts.config().check_secs);
        let mut memory = Memory::default();
        self.read_spool(&mut memory);
        loop {
            self.look_once(&mut memory, OffsetDateTime::now_utc()).await;
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    async fn look_once(&self, memory: &mut Memory, now: OffsetDateTime) {
        memory.trouble = self.store_trouble(memory.trouble.take(), now).await;
        if !memory.loaded && self.alerts.has_channels() {
            match self.load().await {
                Ok((holding, last_summary)) => {
                    // What this process announced before it could read the store stands.
                    for (key, start) in holding {
                        memory.holding.entry(key).or_insert(start);
                    }
                    memory.last_summary = last_summary;
                    memory.loaded = true;
                }
                Err(e) => {
                    tracing::warn!(error = %e.chain(), "cannot read the alerts' state from the store; looking again later");
                }
            }
        }
        let look = look(
            self.store.as_ref(),
            &self.config,
            &self.signals,
            memory.trouble.as_ref(),
            now,
        )
        .await;
        let mut records = Vec::new();
        for condition in &look.holding {
            if memory.holding.contains_key(&condition.key) {
                continue;
            }
            tracing::warn!(key = %condition.key, kind = %condition.kind, "alert: a condition started");
            let record = started(condition);
            memory.holding.insert(condition.key.clone(), record.clone());
            records.push(record);
        }
        let cleared: Vec<String> = memory
            .holding
            .keys()
            .filter(|key| !look.holding.iter().any(|c| &c.key == *key))
            .filter(|key| !look.unknown.iter().any(|u| judged_by(u, key)))
            .cloned()
            .collect();
        for key in cleared {
            if let Some(start) = memory.holding.remove(&key) {
                tracing::info!(key = %key, kind = %start.kind, "alert: a condition cleared");
                records.push(cleared_record(&start, now));
            }
        }
        // Every condition announced and not cleared (one this look could not judge too), as
        // this look sees it, since when it was announced to have begun.
        self.alerts.set_active(
            memory
                .holding
                .values()
                .map(|start| {
                    let mut shown = look
                        .holding
                        .iter()
                        .find(|c| c.key == start.key)
                        .cloned()
                        .unwrap_or_else(|| Condition {
                            key: start.key.clone(),
                            kind: start.kind.clone(),
                            subject: start.subject.clone(),
                            detail: start.detail.clone(),
                            since: start.started_at,
                        });
                    shown.since = start.started_at;
                    shown
                })
                .collect(),
        );
        records.extend(look.events.iter().map(event));
        if let Some(summary) = self.summary_due(memory, now).await {
            records.push(summary);
        }
        if !self.alerts.has_channels() {
            return;
        }
        let records = if memory.trouble.is_some() {
            records
        } else {
            self.not_filed_elsewhere(records).await
        };
        if !records.is_empty() {
            let outgoing = self.alerts.outgoing(&records, now);
            memory.unfiled.push(Filing::new(records, outgoing));
        }
        self.file_or_send(memory, now).await;
        self.write_spool(&memory.unfiled);
    }

    /// Takes up what an earlier run left unfiled: its alerts are filed (or sent) first, and
    /// the conditions they started hold.
    fn read_spool(&self, memory: &mut Memory) {
        let Some(path) = &self.spool else {
            return;
        };
        let text = match std::fs::read(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the alerts left unfiled");
                return;
            }
        };
        let unfiled: Vec<Filing> = match serde_json::from_slice(&text) {
            Ok(unfiled) => unfiled,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "the alerts left unfiled do not read; they are dropped");
                return;
            }
        };
        for record in unfiled.iter().flat_map(|f| &f.records) {
            match record.phase {
                AlertPhase::Started => {
                    memory.holding.insert(record.key.clone(), record.clone());
                }
                AlertPhase::Cleared => {
                    memory.holding.remove(&record.key);
                }
                AlertPhase::Event | AlertPhase::Digest => {}
            }
        }
        tracing::info!(
            count = unfiled.len(),
            "alerts an earlier run could not file are filed now"
        );
        memory.unfiled = unfiled;
    }

    /// Keeps `unfiled` in the spool file, or removes it when nothing is left.
    fn write_spool(&self, unfiled: &[Filing]) {
        let Some(path) = &self.spool else {
            return;
        };
        if unfiled.is_empty() {
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove the alerts left unfiled")
                }
            }
            return;
        }
        let written = (|| {
            let partial = std::path::PathBuf::from(format!("{}.partial", path.display()));
            let _ = std::fs::remove_file(&partial);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let file = crate::files::NewFile::create(path)?;
            serde_json::to_writer(file.file(), unfiled)?;
            file.commit()
        })();
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %format!("{e:#}"), "cannot keep the unfiled alerts on disk; they are in memory only");
        }
    }

    /// The store's trouble now: its own report (sled recovering from a failed write), or a
    /// write check that fails (PostgreSQL out of reach); `before` keeps its start.
    async fn store_trouble(
        &self,
        before: Option<StoreTrouble>,
        now: OffsetDateTime,
    ) -> Option<StoreTrouble> {
        let reason = match self.store.health() {
            StoreHealth::Recovering { reason, .. } | StoreHealth::Failed(reason) => Some(reason),
            StoreHealth::Writable => {
                match tokio::time::timeout(STORE_CHECK_TIMEOUT, self.store.check_writable()).await {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e.chain()),
                    Err(_) => Some(format!(
                        "a write check took longer than {} s",
                        STORE_CHECK_TIMEOUT.as_secs()
                    )),
                }
            }
        }?;
        Some(StoreTrouble {
            since: before.map_or(now, |b| b.since),
            reason,
        })
    }

    /// The conditions holding (their latest record is a start) and when the last summary
    /// was filed, from the records in the store.
    async fn load(
        &self,
    ) -> Result<(BTreeMap<String, AlertRecord>, Option<OffsetDateTime>), crate::store::StoreError>
    {
        let mut holding = BTreeMap::new();
        let mut last_summary = None;
        let mut after = 0;
        loop {
            let batch = self
                .store
                .queue_messages(ALERTS_QUEUE, None, after, 512)
                .await?;
            let Some(last) = batch.last() else {
                break;
            };
            after = last.id;
            for alert in batch.into_iter().filter_map(|m| m.alert) {
                match alert.phase {
                    AlertPhase::Started => {
                        holding.insert(alert.key.clone(), *alert);
                    }
                    AlertPhase::Cleared => {
                        holding.remove(&alert.key);
                    }
                    AlertPhase::Event | AlertPhase::Digest => {
                        if alert.kind == "summary" {
                            last_summary = Some(alert.at);
                        }
                    }
                }
            }
        }
        Ok((holding, last_summary))
    }

    /// Leaves out starts and clears that another replica filed already (the condition's
    /// latest record says the same); when the store cannot tell, they are filed.
    async fn not_filed_elsewhere(&self, records: Vec<AlertRecord>) -> Vec<AlertRecord> {
        let mut kept = Vec::with_capacity(records.len());
        for record in records {
            if matches!(record.phase, AlertPhase::Started | AlertPhase::Cleared)
                && let Ok(Ok(history)) = tokio::time::timeout(
                    STORE_CHECK_TIMEOUT,
                    self.store.referral_messages(&record_ref(&record.key)),
                )
                .await
                && let Some(latest) = history
                    .iter()
                    .rev()
                    .filter(|m| m.queue == ALERTS_QUEUE)
                    .find_map(|m| m.alert.as_deref())
                && latest.phase == record.phase
            {
                continue;
            }
            kept.push(record);
        }
        kept
    }

    /// Files what is waiting, oldest first; while the store cannot write, sends it from
    /// memory by each channel that does not have it yet.
    async fn file_or_send(&self, memory: &mut Memory, now: OffsetDateTime) {
        let mut waiting = std::mem::take(&mut memory.unfiled);
        if memory.trouble.is_some() {
            // Filing would wait for the store's bound, for nothing.
            memory.unfiled = waiting;
            waiting = Vec::new();
        }
        while let Some(mut unfiled) = (!waiting.is_empty()).then(|| waiting.remove(0)) {
            let filing = self.alerts.file(self.store.as_ref(), &mut unfiled, now);
            match tokio::time::timeout(STORE_CHECK_TIMEOUT, filing).await {
                Ok(Ok(())) => {}
                outcome => {
                    let error = match outcome {
                        Ok(Err(e)) => e.chain(),
                        _ => format!("no answer within {} s", STORE_CHECK_TIMEOUT.as_secs()),
                    };
                    tracing::warn!(error = %error, "alerts cannot be filed in the store now; sending them from memory");
                    memory.unfiled.push(unfiled);
                    memory.unfiled.append(&mut waiting);
                    break;
                }
            }
        }
        // Once in the store, the channels' workers send them.
        for unfiled in memory.unfiled.iter_mut().filter(|u| !u.enqueued) {
            for channel in self.alerts.channels() {
                if unfiled.sent.contains(&channel.name) {
                    continue;
                }
                let mut all = true;
                for alert in &unfiled.outgoing {
                    if let Err(e) = channel.send(&alert.id, alert).await {
                        tracing::warn!(channel = %channel.name, reason = %crate::signals::own_words(&e.to_string()), "an alert could not be sent from memory; trying again at the next look");
                        all = false;
                        break;
                    }
                }
                if all {
                    unfiled.sent.push(channel.name.clone());
                }
            }
        }
    }

    /// The watch-list's summary, when one is due (`summary_every_secs` after the last; the
    /// first at the first look).
    async fn summary_due(&self, memory: &mut Memory, now: OffsetDateTime) -> Option<AlertRecord> {
        let every = self.alerts.config().summary_every_secs;
        if every == 0 || !self.alerts.has_channels() || !memory.loaded {
            return None;
        }
        let every = time::Duration::seconds(i64::try_from(every).unwrap_or(i64::MAX));
        if memory.last_summary.is_some_and(|last| now - last < every) {
            return None;
        }
        let list = match crate::watch_list::watch_list(
            self.store.as_ref(),
            &self.config.watch_list,
            now,
            &crate::watch_list::WatchFilter::default(),
        )
        .await
        {
            Ok(list) => list,
            Err(e) => {
                tracing::warn!(error = %e.chain(), "cannot read the watch-list for its summary; trying again at the next look");
                return None;
            }
        };
        memory.last_summary = Some(now);
        let counts = list.counts();
        let total = counts.total();
        let mut detail = format!("{total} referrals need attention:\n");
        for kind in crate::watch_list::WatchKind::ALL {
            detail.push_str(&format!("  {}: {}\n", kind.as_str(), counts.get(kind)));
        }
        detail.push_str("See GET /api/v1/watch-list, or the console's watch-list page.");
        Some(AlertRecord::new(
            "summary",
            "summary",
            AlertPhase::Event,
            format!("watch-list summary: {total} referrals need attention"),
            detail,
            now,
        ))
    }
}

fn started(condition: &Condition) -> AlertRecord {
    AlertRecord::new(
        &condition.kind,
        &condition.key,
        AlertPhase::Started,
        condition.subject.clone(),
        condition.detail.clone(),
        condition.since,
    )
}

fn cleared_record(start: &AlertRecord, now: OffsetDateTime) -> AlertRecord {
    let mut record = AlertRecord::new(
        &start.kind,
        &start.key,
        AlertPhase::Cleared,
        start.subject.clone(),
        format!(
            "It began at {}.",
            super::conditions::rfc3339(start.started_at)
        ),
        start.started_at,
    );
    record.at = now;
    record
}

fn event(condition: &Condition) -> AlertRecord {
    AlertRecord::new(
        &condition.kind,
        &condition.key,
        AlertPhase::Event,
        condition.subject.clone(),
        condition.detail.clone(),
        condition.since,
    )
}

/// Whether `unknown` (a whole key, or a prefix ending in `:`) covers `key`.
fn judged_by(unknown: &str, key: &str) -> bool {
    key == unknown || (unknown.ends_with(':') && key.starts_with(unknown))
}
