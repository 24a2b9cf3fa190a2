//! `hash-password`: reads a new console password and prints its argon2id hash for the
//! configuration.

/// Print the argon2id hash of a password, for a console user's `password_hash`. Reads the
/// password from the terminal without echoing it (twice, to catch a typo), or the first line
/// of standard input when that is not a terminal.
#[derive(Debug, clap::Args)]
pub(super) struct Cmd {}

impl Cmd {
    /// Reads the password and prints its hash.
    pub(super) fn run(self) -> anyhow::Result<()> {
        let password = read_new_password()?;
        println!("{}", crate::config::hash_password(&password)?);
        Ok(())
    }
}

/// A new password: typed twice at the terminal (not echoed), or the first line of standard input.
fn read_new_password() -> anyhow::Result<String> {
    use std::io::IsTerminal;
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ")?;
        let again = rpassword::prompt_password("Again: ")?;
        anyhow::ensure!(first == again, "the two passwords differ; nothing printed");
        first
    } else {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    };
    anyhow::ensure!(
        password.chars().count() >= 12,
        "a console password must be at least 12 characters"
    );
    Ok(password)
}
