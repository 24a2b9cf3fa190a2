//! Backups of the embedded store as one file, taken while the service runs
//! (`GET /api/v1/backup`, `referral-relay backup`) and brought back by `referral-relay restore`.
//!
//! The file is a gzip-compressed (RFC 1952) POSIX tar archive: [`MANIFEST`] first (JSON: the
//! format, when it was taken, the last feed position, the items of each tree, and the size and
//! SHA-256 of every file), then the store's `sled/` directory as a snapshot wrote it
//! ([`MaintenanceStore::snapshot`](crate::store::MaintenanceStore::snapshot)). Records are as
//! stored: with encryption at rest they stay sealed, and restoring needs no key (the service
//! needs it to read them). The OAuth2 signing key file is not included: a restored service
//! signs with a new key, and Ocean fetches a new token on its next 401.
//!
//! A restore checks every file against the manifest before anything is put in place, so a
//! truncated or altered file is refused whole.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::store::{SledStore, SnapshotInfo};

/// The archive's first entry.
pub const MANIFEST: &str = "MANIFEST.json";
/// The manifest's `format`.
const FORMAT: &str = "referral-relay-backup/1";
/// The store's directory inside a data dir and inside the archive.
const STORE_DIR: &str = "sled";
/// The largest manifest read, in bytes (one line per store file: kilobytes in practice).
const MAX_MANIFEST_BYTES: u64 = 16 * 1024 * 1024;
/// The most read after the last file: the tar end-of-archive blocks and record padding.
const MAX_TRAILER_BYTES: u64 = 1024 * 1024;
/// Where a restore unpacks before moving the store into place.
const RESTORING_DIR: &str = "sled.restoring";
/// Directories in a data dir that snapshots are written to (removed when done, or at start).
pub const SNAPSHOT_PREFIX: &str = "backup-";

/// One file of the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub bytes: u64,
    /// Lower-case hex.
    pub sha256: String,
}

/// What a backup holds; see the module documentation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    #[serde(with = "time::serde::rfc3339")]
    pub taken_at: OffsetDateTime,
    /// The last feed position in the backup.
    pub feed_seq: u64,
    /// Items per tree.
    pub trees: BTreeMap<String, u64>,
    /// Every file under `sled/`, by its path in the archive.
    pub files: BTreeMap<String, FileEntry>,
}

/// SHA-256 of everything written through it.
struct Hashing<W> {
    inner: W,
    digest: aws_lc_rs::digest::Context,
    bytes: u64,
}

impl<W> Hashing<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            digest: aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256),
            bytes: 0,
        }
    }

    fn finish(self) -> (W, FileEntry) {
        let hex = hex::encode(self.digest.finish().as_ref());
        (
            self.inner,
            FileEntry {
                bytes: self.bytes,
                sha256: hex,
            },
        )
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.digest.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The files under `root`, as paths relative to it with `/` separators, sorted.
fn files_under(root: &Path) -> std::io::Result<Vec<String>> {
    let mut found = Vec::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        for entry in std::fs::read_dir(root.join(&relative))? {
            let entry = entry?;
            let path = relative.join(entry.file_name());
            if entry.file_type()?.is_dir() {
                pending.push(path);
            } else {
                let text = path
                    .to_str()
                    .ok_or_else(|| std::io::Error::other("a file name is not UTF-8"))?;
                found.push(text.replace(std::path::MAIN_SEPARATOR, "/"));
            }
        }
    }
    found.sort();
    Ok(found)
}

/// The manifest of the snapshot in `dir` (which holds `sled/`), hashing every file.
///
/// # Errors
/// When a file cannot be read.
pub fn manifest(dir: &Path, info: SnapshotInfo) -> std::io::Result<Manifest> {
    let root = dir.join(STORE_DIR);
    let mut files = BTreeMap::new();
    for path in files_under(&root)? {
        let mut hashing = Hashing::new(std::io::sink());
        std::io::copy(&mut std::fs::File::open(root.join(&path))?, &mut hashing)?;
        files.insert(format!("{STORE_DIR}/{path}"), hashing.finish().1);
    }
    Ok(Manifest {
        format: FORMAT.to_owned(),
        taken_at: OffsetDateTime::now_utc(),
        feed_seq: info.feed_seq,
        trees: info.trees,
        files,
    })
}

/// Writes the archive of the snapshot in `dir` with its `manifest` to `out`.
///
/// # Errors
/// When a file cannot be read or `out` refuses bytes (the client went away).
pub fn write(dir: &Path, manifest: &Manifest, out: impl Write) -> std::io::Result<()> {
    let gzip = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gzip);
    tar.mode(tar::HeaderMode::Deterministic);
    let text = serde_json::to_vec_pretty(manifest).map_err(std::io::Error::other)?;
    let mut header = tar::Header::new_ustar();
    header.set_size(text.len() as u64);
    header.set_mode(0o600);
    header.set_mtime(u64::try_from(manifest.taken_at.unix_timestamp()).unwrap_or_default());
    tar.append_data(&mut header, MANIFEST, text.as_slice())?;
    for path in manifest.files.keys() {
        let mut file = std::fs::File::open(dir.join(path))?;
        tar.append_file(path, &mut file)?;
    }
    tar.into_inner()?.finish()?.flush()
}

/// A path inside the archive under `sled/`, with nothing that climbs out of it.
fn store_path(path: &Path) -> Option<PathBuf> {
    let mut parts = path.components();
    if parts.next() != Some(Component::Normal(STORE_DIR.as_ref())) {
        return None;
    }
    let rest: PathBuf = parts
        .map(|c| match c {
            Component::Normal(part) => Some(part),
            _ => None,
        })
        .collect::<Option<_>>()?;
    (!rest.as_os_str().is_empty()).then_some(rest)
}

/// Reads a whole archive, checking every file against the manifest, and writes the files under
/// `unpack_to` when given. Returns the manifest.
///
/// # Errors
/// When the archive is not one, is truncated, or a file's size or SHA-256 differs from the
/// manifest's (or a listed file is missing, or an unlisted one is present).
pub fn read(archive: impl Read, unpack_to: Option<&Path>) -> anyhow::Result<Manifest> {
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
    let mut entries = tar
        .entries()
        .context("not a referral-relay backup (not a tar.gz archive)")?;
    let mut first = entries
        .next()
        .context("the backup is empty")?
        .context("not a referral-relay backup (not a tar.gz archive)")?;
    if first.path().ok().as_deref() != Some(Path::new(MANIFEST)) {
        bail!("not a referral-relay backup: it does not start with {MANIFEST}");
    }
    if first.header().size().unwrap_or(u64::MAX) > MAX_MANIFEST_BYTES {
        bail!(
            "the backup's manifest is larger than {MAX_MANIFEST_BYTES} bytes; not a referral-relay backup"
        );
    }
    let mut text = Vec::new();
    first
        .read_to_end(&mut text)
        .context("the backup is truncated")?;
    let manifest: Manifest =
        serde_json::from_slice(&text).context("the backup's manifest is not readable")?;
    if manifest.format != FORMAT {
        bail!(
            "the backup's format is {}; this build reads {FORMAT}",
            manifest.format
        );
    }
    let mut seen = BTreeMap::new();
    for entry in entries {
        let mut entry = entry.context("the backup is truncated or damaged")?;
        let path = entry
            .path()
            .context("a file name in the backup is not readable")?
            .into_owned();
        let shown = path.display().to_string();
        let relative = store_path(&path)
            .with_context(|| format!("the backup holds {shown}, outside {STORE_DIR}/"))?;
        if !entry.header().entry_type().is_file() {
            bail!("the backup holds {shown}, which is not a plain file");
        }
        let expected = manifest.files.get(&shown).with_context(|| {
            format!("the backup holds {shown}, which its manifest does not list")
        })?;
        if seen.contains_key(&shown) {
            bail!("the backup holds {shown} twice");
        }
        // Refused before a byte is written: the entry's size (a PAX `size` record's when there
        // is one, else the header's) must be the manifest's; the entry then yields exactly that
        // many bytes.
        let size = entry.size();
        if size != expected.bytes {
            bail!(
                "{shown} in the backup is {size} bytes where its manifest says {} (damaged or altered)",
                expected.bytes
            );
        }
        let sink: Box<dyn Write> = match unpack_to {
            Some(root) => {
                let target = root.join(&relative);
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent)
                        .with_context(|| format!("cannot create {}", parent.display()))?;
                }
                Box::new(
                    crate::files::create_private(&target)
                        .with_context(|| format!("cannot create {}", target.display()))?,
                )
            }
            None => Box::new(std::io::sink()),
        };
        let mut hashing = Hashing::new(sink);
        std::io::copy(&mut (&mut entry).take(expected.bytes), &mut hashing)
            .context("the backup is truncated or damaged")?;
        let (_, found) = hashing.finish();
        if &found != expected {
            bail!("{shown} in the backup does not match its manifest (damaged or altered)");
        }
        seen.insert(shown, ());
    }
    if let Some(missing) = manifest.files.keys().find(|p| !seen.contains_key(*p)) {
        bail!("the backup is incomplete: {missing} is missing");
    }
    // To the end of the gzip stream, so its trailer (CRC-32 and length) is checked too; what
    // follows the last file is only padding, so little is read.
    let trailing = std::io::copy(
        &mut tar.into_inner().take(MAX_TRAILER_BYTES + 1),
        &mut std::io::sink(),
    )
    .context("the backup is truncated or damaged")?;
    if trailing > MAX_TRAILER_BYTES {
        bail!(
            "the backup has more than {MAX_TRAILER_BYTES} bytes after its last file (damaged or altered)"
        );
    }
    Ok(manifest)
}

/// Syncs every file and directory under `root`, and `root`.
fn sync_all(root: &Path) -> std::io::Result<()> {
    for path in files_under(root)? {
        std::fs::File::open(root.join(path))?.sync_all()?;
    }
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                dirs.push(entry.path());
            }
        }
        std::fs::File::open(&dir)?.sync_all()?;
    }
    Ok(())
}

/// Brings the backup `archive` back as the store of `data_dir`, which must hold none: unpacks
/// it beside, checking every file against the manifest, syncs it, counts each of its trees
/// against the manifest, and only then moves it into place. Returns the manifest.
///
/// # Errors
/// When `data_dir` already holds a store, the archive fails [`read`], or the restored store's
/// counts differ from the manifest's.
pub fn restore(archive: impl Read, data_dir: &Path) -> anyhow::Result<Manifest> {
    let live = data_dir.join(STORE_DIR);
    if live.exists() {
        bail!(
            "{} already holds a store; restore into an empty data dir",
            data_dir.display()
        );
    }
    let created = !data_dir.exists();
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    // The data dir's lock, as a service or a command holds it: one restore at a time, and
    // none into a dir in use.
    let _lock = SledStore::lock_data_dir(data_dir).map_err(|e| {
        anyhow::anyhow!("cannot restore into {}: {}", data_dir.display(), e.chain())
    })?;
    let restored = unpack_and_check(archive, data_dir, &live);
    if restored.is_err() && created {
        drop(_lock);
        let _ = std::fs::remove_file(data_dir.join(crate::store::LOCK_FILE));
        let _ = std::fs::remove_dir(data_dir);
    }
    restored
}

/// The body of [`restore`], under the data dir's lock.
fn unpack_and_check(archive: impl Read, data_dir: &Path, live: &Path) -> anyhow::Result<Manifest> {
    let unpacking = data_dir.join(RESTORING_DIR);
    if unpacking.exists() {
        std::fs::remove_dir_all(&unpacking)
            .with_context(|| format!("cannot remove {}", unpacking.display()))?;
    }
    // Unpacked as a store of its own beside the data dir's, checked whole, then moved in.
    let unpacked = unpacking.join(STORE_DIR);
    let checked = read(archive, Some(&unpacked)).and_then(|manifest| {
        sync_all(&unpacked).context("cannot sync the restored files")?;
        let counts = SledStore::tree_counts(&unpacking)
            .map_err(|e| anyhow::anyhow!("the restored store does not open: {}", e.chain()))?;
        for (tree, expected) in &manifest.trees {
            let found = counts.get(tree).copied().unwrap_or_default();
            if found != *expected {
                bail!(
                    "the restored store's {tree} holds {found} items; the backup's manifest says {expected}"
                );
            }
        }
        Ok(manifest)
    });
    let manifest = match checked {
        Ok(manifest) => manifest,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&unpacking);
            return Err(e);
        }
    };
    std::fs::rename(&unpacked, live)
        .with_context(|| format!("cannot move the restored store to {}", live.display()))?;
    std::fs::File::open(data_dir)
        .and_then(|d| d.sync_all())
        .context("cannot sync the data dir")?;
    let _ = std::fs::remove_dir_all(&unpacking);
    Ok(manifest)
}

/// Removes snapshot directories a service left in `data_dir` (stopped mid-backup).
pub fn remove_leftovers(data_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(data_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name
            .to_str()
            .is_some_and(|n| n.starts_with(SNAPSHOT_PREFIX))
            && entry.file_type().is_ok_and(|t| t.is_dir())
            && let Err(e) = std::fs::remove_dir_all(entry.path())
        {
            tracing::warn!(error = %e, dir = %entry.path().display(), "cannot remove a leftover backup snapshot");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_under_the_store_directory_are_unpacked() {
        assert_eq!(store_path(Path::new("sled/db")), Some(PathBuf::from("db")));
        assert_eq!(
            store_path(Path::new("sled/blobs/1")),
            Some(PathBuf::from("blobs/1"))
        );
        for bad in [
            "sled",
            "db",
            "sled/../x",
            "/sled/db",
            "other/db",
            "./sled/db",
        ] {
            assert_eq!(store_path(Path::new(bad)), None, "{bad}");
        }
    }

    /// A tar.gz of a manifest listing `listed` and the entries `files` (path, size, byte).
    fn archive(listed: &[(&str, u64)], files: &[(&str, u64)], after: u64) -> Vec<u8> {
        let manifest = Manifest {
            format: FORMAT.into(),
            taken_at: OffsetDateTime::UNIX_EPOCH,
            feed_seq: 0,
            trees: BTreeMap::new(),
            files: listed
                .iter()
                .map(|(path, bytes)| {
                    let zeros = vec![0; usize::try_from(*bytes).unwrap()];
                    let entry = FileEntry {
                        bytes: *bytes,
                        sha256: crate::digest::sha256_hex(&zeros),
                    };
                    ((*path).to_owned(), entry)
                })
                .collect(),
        };
        let gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut tar = tar::Builder::new(gzip);
        let text = serde_json::to_vec(&manifest).unwrap();
        let mut header = tar::Header::new_ustar();
        header.set_size(text.len() as u64);
        header.set_mode(0o600);
        tar.append_data(&mut header, MANIFEST, text.as_slice())
            .unwrap();
        for (path, size) in files {
            let mut header = tar::Header::new_ustar();
            header.set_size(*size);
            header.set_mode(0o600);
            tar.append_data(&mut header, path, std::io::repeat(0).take(*size))
                .unwrap();
        }
        let mut gzip = tar.into_inner().unwrap();
        std::io::copy(&mut std::io::repeat(0).take(after), &mut gzip).unwrap();
        gzip.finish().unwrap()
    }

    #[test]
    fn an_entry_larger_than_its_manifest_says_is_refused_before_it_is_written() {
        let dir = tempfile::TempDir::new().unwrap();
        let big = archive(&[("sled/db", 10)], &[("sled/db", 64 << 20)], 0);
        assert!(big.len() < 1 << 20, "{} bytes compressed", big.len());
        let error = read(big.as_slice(), Some(dir.path())).unwrap_err();
        assert!(
            format!("{error:#}").contains("where its manifest says 10"),
            "{error:#}"
        );
        assert!(!dir.path().join("db").exists(), "nothing is written");

        // The same through a PAX `size` record that overrides the header's (tar readers take it).
        let gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut tar = tar::Builder::new(gzip);
        let manifest = serde_json::to_vec(&Manifest {
            format: FORMAT.into(),
            taken_at: OffsetDateTime::UNIX_EPOCH,
            feed_seq: 0,
            trees: BTreeMap::new(),
            files: [(
                "sled/db".to_owned(),
                FileEntry {
                    bytes: 10,
                    sha256: "00".repeat(32),
                },
            )]
            .into(),
        })
        .unwrap();
        let mut header = tar::Header::new_ustar();
        header.set_size(manifest.len() as u64);
        tar.append_data(&mut header, MANIFEST, manifest.as_slice())
            .unwrap();
        let big: u64 = 64 << 20;
        let record = format!(" size={big}\n");
        let record = format!("{}{record}", record.len() + 2);
        let mut pax = tar::Header::new_ustar();
        pax.set_entry_type(tar::EntryType::XHeader);
        pax.set_size(record.len() as u64);
        tar.append_data(&mut pax, "PaxHeaders/db", record.as_bytes())
            .unwrap();
        let mut header = tar::Header::new_ustar();
        header.set_size(10);
        tar.append_data(&mut header, "sled/db", std::io::repeat(0).take(big))
            .unwrap();
        let pax = tar.into_inner().unwrap().finish().unwrap();
        let error = read(pax.as_slice(), Some(dir.path())).unwrap_err();
        assert!(
            format!("{error:#}").contains("where its manifest says 10"),
            "{error:#}"
        );
        assert!(!dir.path().join("db").exists(), "nothing is written");

        let twice = archive(&[("sled/db", 0)], &[("sled/db", 0), ("sled/db", 0)], 0);
        let error = read(twice.as_slice(), None).unwrap_err();
        assert!(format!("{error:#}").contains("twice"), "{error:#}");
    }

    #[test]
    fn decompression_after_the_last_file_is_bounded() {
        let bomb = archive(&[], &[], 256 << 20);
        let error = read(bomb.as_slice(), None).unwrap_err();
        assert!(
            format!("{error:#}").contains("after its last file"),
            "{error:#}"
        );
    }
}
