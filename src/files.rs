//! Files that hold patient data (the store, exports, backups, restored data dirs): readable and
//! writable by the service's own user only, and never written through a link someone planted.

use std::fs::File;
use std::io;
use std::path::Path;

/// Mode of every file the relay creates itself: owner read and write only.
pub const PRIVATE_MODE: u32 = 0o600;

/// Makes every file and directory this process creates from now on inaccessible to group and
/// others (umask 077), the store's own files included (sled creates them with mode 0666 less
/// the umask). Called once at start, before any thread is spawned; umask(2) cannot fail.
pub fn restrict_new_files() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
}

/// Creates `path` as a new file with [`PRIVATE_MODE`]: an existing file or a link at `path`
/// (even one pointing nowhere) is an `AlreadyExists` error, never followed or truncated.
pub fn create_private(path: &Path) -> io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, PRIVATE_MODE);
    options.open(path)
}

/// A file written beside its destination as `{destination}.partial` (new, [`PRIVATE_MODE`]) and
/// renamed over it by [`commit`](Self::commit) once whole: a run that fails leaves whatever was
/// at the destination as it was, and removes its partial file when dropped.
pub struct NewFile {
    partial: std::path::PathBuf,
    destination: std::path::PathBuf,
    file: File,
    committed: bool,
}

impl NewFile {
    /// Creates `{destination}.partial`; an error names it (a file or link already there, left
    /// by an earlier run or planted, is never written through).
    pub fn create(destination: &Path) -> anyhow::Result<Self> {
        use anyhow::Context;
        let partial = std::path::PathBuf::from(format!("{}.partial", destination.display()));
        let file = create_private(&partial).with_context(|| {
            format!(
                "cannot create {} (if an earlier run left it, remove it)",
                partial.display()
            )
        })?;
        Ok(Self {
            partial,
            destination: destination.to_owned(),
            file,
            committed: false,
        })
    }

    /// The partial file being written.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The partial file's path.
    pub fn partial(&self) -> &Path {
        &self.partial
    }

    /// Flushes the file to disk and renames it to its destination.
    pub fn commit(mut self) -> anyhow::Result<()> {
        use anyhow::Context;
        self.file.sync_all()?;
        std::fs::rename(&self.partial, &self.destination).with_context(|| {
            format!(
                "cannot move {} to {}",
                self.partial.display(),
                self.destination.display()
            )
        })?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for NewFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.partial);
        }
    }
}
