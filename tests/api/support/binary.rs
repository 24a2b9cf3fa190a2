//! The real `referral-relay` binary: one-shot commands, and `serve` on a loopback port with its
//! log kept.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The binary with `args`, run with the caller's environment minus anything that configures
/// the relay (`RELAY_*`, `RUST_LOG`), plus `env`.
pub fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_referral-relay"));
    command.args(args);
    for (key, _) in std::env::vars_os() {
        if key
            .to_str()
            .is_some_and(|k| k.starts_with("RELAY_") || k == "RUST_LOG")
        {
            command.env_remove(key);
        }
    }
    command.envs(env.iter().copied());
    command
}

/// Runs the binary with `args` and `env` (as [`command`]) to completion.
pub fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    command(args, env).output().unwrap()
}

/// The `referral-relay serve` process, the address it reported, and what it logs.
pub struct Relay {
    pub child: Child,
    pub addr: SocketAddr,
    /// Every line written to stderr so far.
    pub logs: Arc<Mutex<Vec<String>>>,
}

/// Starts the real binary on `data_dir`, with `config` as its config file when given.
pub fn start_relay_with(data_dir: &Path, config: Option<&Path>) -> Relay {
    launch(data_dir, config, &[], &[("RUST_LOG", "info")])
}

/// Starts `referral-relay serve` on 127.0.0.1:0 with extra arguments and environment, and
/// waits until it reports its address (from a text or a JSON log line).
pub fn launch(
    data_dir: &Path,
    config: Option<&Path>,
    args: &[&str],
    env: &[(&str, &str)],
) -> Relay {
    launch_on("127.0.0.1:0", data_dir, config, args, env)
}

/// As [`launch`], listening on `listen` (a loopback address the test reserved).
pub fn launch_on(
    listen: &str,
    data_dir: &Path,
    config: Option<&Path>,
    args: &[&str],
    env: &[(&str, &str)],
) -> Relay {
    let mut command = command(&["serve"], env);
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    command
        .args(["--listen", listen])
        .arg("--data-dir")
        .arg(data_dir)
        .args(args);
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let logs = Arc::new(Mutex::new(Vec::new()));
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("the relay exited before it was listening")
            .unwrap();
        logs.lock().unwrap().push(line.clone());
        if let Some(addr) = listening_address(&line) {
            break addr;
        }
    };
    // Keep draining stderr so the process never blocks on a full pipe.
    let kept = Arc::clone(&logs);
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            kept.lock().unwrap().push(line);
        }
    });
    Relay { child, addr, logs }
}

fn listening_address(line: &str) -> Option<SocketAddr> {
    if line.starts_with('{') {
        let json: serde_json::Value = serde_json::from_str(line).ok()?;
        if json["fields"]["message"] != "listening" {
            return None;
        }
        return json["fields"]["addr"].as_str()?.parse().ok();
    }
    if !line.contains("listening") {
        return None;
    }
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))?
        .parse()
        .ok()
}

/// Sends SIGTERM and waits (bounded) for the process to exit; returns whether it exited 0.
pub fn terminate(relay: &mut Relay) -> bool {
    send_sigterm(relay);
    wait_exit(relay)
}

pub fn send_sigterm(relay: &Relay) {
    signal(relay, "-TERM");
}

/// Sends SIGHUP, as an operator does after renewing the certificate files.
pub fn send_sighup(relay: &Relay) {
    signal(relay, "-HUP");
}

fn signal(relay: &Relay, signal: &str) {
    let pid = relay.child.id().to_string();
    let status = Command::new("kill").args([signal, &pid]).status().unwrap();
    assert!(status.success());
}

/// Waits up to a minute for the process to exit; returns whether it exited 0.
pub fn wait_exit(relay: &mut Relay) -> bool {
    for _ in 0..1200 {
        if let Some(status) = relay.child.try_wait().unwrap() {
            return status.success();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    relay.child.kill().unwrap();
    panic!("the relay did not exit within a minute of SIGTERM");
}
