//! A real small filesystem that fills up: a tmpfs mounted for the test (the test machines run
//! as root), for the tests of a full disk.

use std::path::{Path, PathBuf};

/// A tmpfs of `size` mounted at a fresh temporary directory, unmounted on drop.
pub struct SmallFilesystem {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallFilesystem {
    pub fn mount(size: &str) -> Self {
        let dir = tempfile::TempDir::new().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("cannot run mount");
        assert!(
            status.success(),
            "cannot mount a tmpfs for the disk-full test (it needs root, as on this project's machines)"
        );
        Self {
            path: dir.path().to_path_buf(),
            _dir: dir,
        }
    }

    /// Takes up all but `leave` bytes with a file; returns its path.
    pub fn fill(&self, leave: u64) -> PathBuf {
        let filler = self.path.join("filler");
        let free = free_bytes(&self.path);
        let file = std::fs::File::create(&filler).unwrap();
        file.set_len(0).unwrap();
        use std::io::Write;
        let mut file = std::io::BufWriter::new(file);
        let chunk = vec![0u8; 64 * 1024];
        let mut written = 0;
        while written + leave < free {
            let n = chunk
                .len()
                .min(usize::try_from(free - leave - written).unwrap());
            if file.write_all(&chunk[..n]).is_err() {
                break;
            }
            written += n as u64;
        }
        let _ = file.flush();
        filler
    }
}

impl Drop for SmallFilesystem {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

fn free_bytes(path: &Path) -> u64 {
    let out = std::process::Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}
