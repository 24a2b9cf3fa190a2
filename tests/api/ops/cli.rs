//! The real binary's configuration commands: layers, environment, errors naming keys.

use crate::support::binary::run;

#[test]
fn check_config_prints_the_defaults_with_no_config_at_all() {
    let out = run(&["check-config"], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: toml::Table = toml::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap();
    assert_eq!(printed["server"]["listen"].as_str(), Some("0.0.0.0:8080"));
    assert_eq!(printed["server"]["data_dir"].as_str(), Some("./data"));
    assert_eq!(
        printed["server"]["max_body_bytes"].as_integer(),
        Some(16_777_216)
    );
    assert_eq!(
        printed["integrations"]["default"]["auth"]["scheme"].as_str(),
        Some("none")
    );
}

#[test]
fn the_environment_overrides_the_file() {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        file.path(),
        "[server]\nlisten = \"127.0.0.1:7000\"\ndata_dir = \"/srv/relay\"\n\
         [integrations.ocean]\nauth = { scheme = \"none\" }\n",
    )
    .unwrap();
    let out = run(
        &["check-config", "--config", file.path().to_str().unwrap()],
        &[("RELAY__SERVER__LISTEN", "127.0.0.1:7001")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: toml::Table = toml::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap();
    assert_eq!(printed["server"]["listen"].as_str(), Some("127.0.0.1:7001"));
    assert_eq!(printed["server"]["data_dir"].as_str(), Some("/srv/relay"));
    let integrations: Vec<&String> = printed["integrations"].as_table().unwrap().keys().collect();
    assert_eq!(
        integrations,
        vec!["ocean"],
        "the built-in default must be gone"
    );
}

#[test]
fn a_bad_environment_value_is_refused_naming_the_key() {
    let out = run(
        &["check-config"],
        &[("RELAY__SERVER__MAX_BODY_BYTES", "lots")],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.to_lowercase().contains("server.max_body_bytes"),
        "{stderr}"
    );
    assert!(stderr.contains("RELAY__"), "{stderr}");

    let out = run(&["serve", "--config", "/nonexistent/relay.toml"], &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/relay.toml"), "{stderr}");
}

#[test]
fn check_config_redacts_every_secret() {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        file.path(),
        r#"
[oauth2]
signing_key = "signing-key-SECRET-0123456789abcdef"

[integrations.basic]
auth = { scheme = "basic", username = "ocean", password = "password-SECRET" }
[integrations.oauth]
auth = { scheme = "oauth2", clients = [{ client_id = "ocean-client", client_secret = "client-SECRET" }] }
[integrations.bearer]
auth = { scheme = "bearer", tokens = ["token-SECRET"] }
[integrations.hmac]
auth = { scheme = "hmac", secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"] }
[console.users.alice]
password_hash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$SECRETh4sh0f4p4ssw0rdSECRETh4sh0f4p4ssw0"
role = "admin"
"#,
    )
    .unwrap();
    let out = run(
        &["check-config", "--config", file.path().to_str().unwrap()],
        &[(
            "RELAY__INTEGRATIONS__BEARER__AUTH__TOKENS",
            "[\"env-token-SECRET\"]",
        )],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    assert!(!printed.contains("SECRET"), "{printed}");
    assert!(
        !printed.contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        "{printed}"
    );
    assert!(printed.contains("[redacted]"));
    // What is not secret stays readable.
    assert!(printed.contains("ocean-client") && printed.contains("username = \"ocean\""));
}

#[test]
fn a_secret_with_the_wrong_type_is_not_echoed_in_the_error() {
    let out = run(
        &["check-config"],
        &[
            ("RELAY__INTEGRATIONS__X__AUTH__SCHEME", "bearer"),
            (
                "RELAY__INTEGRATIONS__X__AUTH__TOKENS",
                "lonely-token-SECRET",
            ),
        ],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("integrations.x.auth"), "{stderr}");
    assert!(!stderr.contains("SECRET"), "{stderr}");
}

#[test]
fn the_container_image_config_loads_and_points_at_the_volume() {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/config/container.toml");
    let out = run(&["check-config", "--config", file], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: toml::Table = toml::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap();
    assert_eq!(printed["server"]["data_dir"].as_str(), Some("/data"));
    assert_eq!(printed["server"]["listen"].as_str(), Some("0.0.0.0:8080"));
    assert_eq!(printed["log"]["format"].as_str(), Some("json"));
    // The image's config file as RELAY_CONFIG, overridden from the environment.
    let out = run(
        &["check-config"],
        &[("RELAY_CONFIG", file), ("RELAY__LOG__FORMAT", "text")],
    );
    let printed: toml::Table = toml::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap();
    assert_eq!(printed["log"]["format"].as_str(), Some("text"));
    assert_eq!(printed["server"]["data_dir"].as_str(), Some("/data"));
}

#[test]
fn secrets_are_read_from_files_named_by_the_environment() {
    let dir = tempfile::TempDir::new().unwrap();
    let password = dir.path().join("ocean-password");
    std::fs::write(&password, "from-a-secret-file\n").unwrap();
    let key = dir.path().join("storage-key");
    std::fs::write(&key, "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\n").unwrap();
    let env = [
        ("RELAY__INTEGRATIONS__OCEAN__AUTH__SCHEME", "basic"),
        ("RELAY__INTEGRATIONS__OCEAN__AUTH__USERNAME", "ocean"),
        (
            "RELAY__INTEGRATIONS__OCEAN__AUTH__PASSWORD_FILE",
            password.to_str().unwrap(),
        ),
        ("RELAY__STORAGE__ENCRYPTION_KEY_FILE", key.to_str().unwrap()),
    ];
    let previous = dir.path().join("previous-keys");
    std::fs::write(
        &previous,
        "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=\nAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwM=\n",
    )
    .unwrap();
    let mut with_previous = env.to_vec();
    with_previous.push((
        "RELAY__STORAGE__PREVIOUS_KEYS_FILE",
        previous.to_str().unwrap(),
    ));
    let out = run(&["check-config"], &with_previous);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let printed: toml::Table = toml::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap();
    let previous = printed["storage"]["previous_keys"].as_array().unwrap();
    assert_eq!(previous.len(), 2, "{previous:?}");

    let out = run(&["check-config"], &env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let printed: toml::Table = toml::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap();
    let auth = &printed["integrations"]["ocean"]["auth"];
    assert_eq!(auth["scheme"].as_str(), Some("basic"));
    assert_eq!(auth["password"].as_str(), Some("[redacted]"));
    assert_eq!(
        printed["storage"]["encryption_key"].as_str(),
        Some("[redacted]")
    );

    // A file holding a key of the wrong size is refused, naming the key, not its value.
    std::fs::write(&key, "c2hvcnQ=").unwrap();
    let out = run(&["check-config"], &env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("storage.encryption_key"), "{stderr}");
    assert!(!stderr.contains("c2hvcnQ="), "{stderr}");
}

/// `hash-password` reads the password from standard input (not a terminal here) and prints an
/// argon2id hash the console accepts; a short password is refused and nothing is printed.
#[test]
fn hash_password_prints_a_hash_of_the_password_read_from_stdin() {
    use std::io::Write;
    let hash = |password: &str| {
        let mut child = crate::support::binary::command(&["hash-password"], &[])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{password}\n").as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let out = hash("a long console password");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    let printed = printed.trim();
    assert!(printed.starts_with("$argon2id$"), "{printed}");
    assert!(referral_relay::config::verify_password(
        printed,
        "a long console password"
    ));
    assert!(!referral_relay::config::verify_password(
        printed,
        "a long console passwork"
    ));
    assert!(!printed.contains("a long console password"));

    let short = hash("short");
    assert!(!short.status.success());
    assert!(short.stdout.is_empty());
    assert!(String::from_utf8_lossy(&short.stderr).contains("at least 12 characters"));
}

/// What a mistyped or half-filled environment does: refused, naming the variable, never a
/// quieter configuration than the operator asked for.
#[test]
fn environment_mistakes_are_refused_or_read_as_meant() {
    let dir = tempfile::TempDir::new().unwrap();
    let password = dir.path().join("ocean-password");
    std::fs::write(&password, "from-a-secret-file\n").unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "").unwrap();
    let bad_key = dir.path().join("bad-key");
    std::fs::write(&bad_key, "not-a-key").unwrap();
    let stderr = |out: &std::process::Output| String::from_utf8_lossy(&out.stderr).into_owned();

    // Names in lower case are read as figment reads them, so an integration configured that
    // way replaces the unauthenticated built-in one, and its `_file` secret is read.
    let out = run(
        &["check-config"],
        &[
            ("relay__integrations__ocean__auth__scheme", "basic"),
            ("relay__integrations__ocean__auth__username", "ocean"),
            (
                "relay__integrations__ocean__auth__password_file",
                password.to_str().unwrap(),
            ),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let printed: toml::Table = toml::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap();
    let integrations: Vec<&String> = printed["integrations"].as_table().unwrap().keys().collect();
    assert_eq!(
        integrations,
        vec!["ocean"],
        "the built-in default must be gone"
    );

    // An empty secret file would turn encryption off without a word.
    let out = run(
        &["check-config"],
        &[(
            "RELAY__STORAGE__ENCRYPTION_KEY_FILE",
            empty.to_str().unwrap(),
        )],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("RELAY__STORAGE__ENCRYPTION_KEY_FILE")
            && stderr(&out).contains("is empty"),
        "{}",
        stderr(&out)
    );

    // A value from a file that does not parse: the error names the variable, not our code.
    let out = run(
        &["check-config"],
        &[(
            "RELAY__STORAGE__ENCRYPTION_KEY_FILE",
            bad_key.to_str().unwrap(),
        )],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("storage.encryption_key")
            && stderr(&out).contains("RELAY__STORAGE__ENCRYPTION_KEY_FILE")
            && !stderr(&out).contains("src/"),
        "{}",
        stderr(&out)
    );

    // One underscore after RELAY: figment would ignore it, and the key with it.
    let out = run(
        &["check-config"],
        &[(
            "RELAY_STORAGE__ENCRYPTION_KEY_FILE",
            bad_key.to_str().unwrap(),
        )],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("RELAY_STORAGE__ENCRYPTION_KEY_FILE")
            && stderr(&out).contains("RELAY__"),
        "{}",
        stderr(&out)
    );

    // A log level the filter would read as a module name: nothing would ever be logged.
    let out = run(&["check-config"], &[("RELAY__LOG__LEVEL", "warning")]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("log.level"), "{}", stderr(&out));
    for good in ["WARN", "referral_relay=debug,info", "off"] {
        let out = run(&["check-config"], &[("RELAY__LOG__LEVEL", good)]);
        assert!(out.status.success(), "{good}: {}", stderr(&out));
    }
}
