//! Implementations of standards that are not ours, run as the relay's peers on loopback:
//! a Standard Webhooks receiver verifying with the reference library (`standardwebhooks` from
//! PyPI, in a virtual environment under `target/` made on first use). A peer that cannot be
//! installed fails the test; it never skips.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

/// The pinned version of the Standard Webhooks reference library.
const STANDARDWEBHOOKS: &str = "standardwebhooks==1.3.0";

/// The Python of the peers' virtual environment, made (and the library installed) on first use.
fn python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/peers-venv");
            let python = venv.join("bin/python");
            let installed = Command::new(&python)
                .args(["-c", "import standardwebhooks"])
                .status()
                .is_ok_and(|s| s.success());
            if !installed {
                let made = Command::new("python3")
                    .args(["-m", "venv"])
                    .arg(&venv)
                    .status()
                    .expect("python3 with venv is needed for the destination tests");
                assert!(made.success(), "python3 -m venv failed");
                let pip = Command::new(venv.join("bin/pip"))
                    .args([
                        "install",
                        "--quiet",
                        "--disable-pip-version-check",
                        STANDARDWEBHOOKS,
                    ])
                    .status()
                    .expect("pip is needed for the destination tests");
                assert!(pip.success(), "pip install {STANDARDWEBHOOKS} failed");
            }
            python
        })
        .clone()
}

/// `tests/peers/webhook_receiver.py` on a loopback port, accepting what any of its secrets
/// signed. Killed when dropped.
pub struct WebhookReceiver {
    child: Child,
    pub url: String,
    client: reqwest::Client,
}

impl WebhookReceiver {
    pub fn start(secrets: &[&str]) -> Self {
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/webhook_receiver.py");
        let mut child = Command::new(python())
            .arg(script)
            .args(secrets)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cannot start the webhook receiver");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("the webhook receiver did not start: {line:?}"));
        Self {
            child,
            url: format!("http://127.0.0.1:{port}/hook"),
            client: reqwest::Client::new(),
        }
    }

    fn control_url(&self) -> String {
        self.url.replace("/hook", "/control")
    }

    /// What it received: `received` (each verified message once), `attempts`, `duplicates`,
    /// `bad_signatures`.
    pub async fn received(&self) -> Value {
        self.client
            .get(self.url.replace("/hook", "/received"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Waits (up to 60 s) until `count` distinct messages arrived; returns them.
    pub async fn wait_for(&self, count: usize) -> Vec<Value> {
        for _ in 0..600 {
            let received = self.received().await;
            let messages = received["received"].as_array().unwrap().clone();
            if messages.len() >= count {
                return messages;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{count} messages never arrived: {}", self.received().await);
    }

    /// Answers every request after `ms` milliseconds.
    pub async fn delay(&self, ms: u64) {
        self.control(serde_json::json!({"delay_ms": ms})).await;
    }

    async fn control(&self, rule: Value) {
        self.client
            .post(self.control_url())
            .json(&rule)
            .send()
            .await
            .unwrap();
    }

    /// Answers `status` to the next `times` requests for `referral`.
    pub async fn fail(&self, referral: &str, status: u16, times: u32) {
        let rule = serde_json::json!({"referral": referral, "status": status, "times": times});
        self.control(rule).await;
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
