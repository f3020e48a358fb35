//! The RabbitMQ password, kept out of settings that others can read.
//!
//! A URL setting is visible to more people than its owner thinks: PostgreSQL shows
//! `trempy.amqp_url` to every member of `pg_read_all_settings` (so `pg_monitor`) and writes it to
//! the server log on every reload (`parameter "trempy.amqp_url" changed to …`); a command-line
//! flag shows in `ps`. So both sides accept a URL *without* its password plus a password file,
//! checked like PostgreSQL checks `ssl_key_file`: a regular file, owned by the user running the
//! process (mode 0600 or less) or by root (0640 or less). [`resolve`] puts the two together just
//! before connecting, so a rotated password is picked up at the next connection.

use std::path::Path;

use url::Url;

use crate::error::{Error, ErrorKind, Result};

/// The URL to connect with: `url` itself, or `url` with the password read from `password_file`.
///
/// Errors never contain the URL or the password (a URL parser's error would echo the URL).
pub fn resolve(url: &str, password_file: Option<&Path>) -> Result<String> {
    let Some(file) = password_file else {
        return Ok(url.to_owned());
    };
    let mut parsed = parse(url)?;
    if parsed.password().is_some() {
        return Err(Error::new(
            ErrorKind::Credentials,
            "the RabbitMQ URL holds a password and a password file is set too; remove the password from the URL",
        ));
    }
    if parsed.username().is_empty() {
        return Err(Error::new(
            ErrorKind::Credentials,
            "the RabbitMQ URL names no user (amqp://user@host:port/vhost) for the password file's password",
        ));
    }
    let password = read_password_file(file)?;
    // The URL keeps what it is given as it is: encode every byte that is not alphanumeric (the
    // AMQP client decodes it back).
    let encoded = percent_encoding::utf8_percent_encode(&password, percent_encoding::NON_ALPHANUMERIC).to_string();
    parsed
        .set_password(Some(&encoded))
        .map_err(|()| Error::new(ErrorKind::Credentials, "the RabbitMQ URL cannot take a password"))?;
    Ok(parsed.to_string())
}

/// Whether `url` itself holds a password (readable wherever the URL is). False for a URL that
/// does not parse: connecting with it will say so.
pub fn holds_password(url: &str) -> bool {
    parse(url).is_ok_and(|u| u.password().is_some())
}

fn parse(url: &str) -> Result<Url> {
    let parsed = Url::parse(url).map_err(|e| {
        Error::new(
            ErrorKind::Credentials,
            format!("the RabbitMQ URL is malformed ({e}); expected amqp://user@host:port/vhost"),
        )
    })?;
    if !matches!(parsed.scheme(), "amqp" | "amqps") || parsed.cannot_be_a_base() {
        return Err(Error::new(
            ErrorKind::Credentials,
            "the RabbitMQ URL is malformed; expected amqp://user@host:port/vhost (or amqps://)",
        ));
    }
    Ok(parsed)
}

/// Reads the password: the file's content without one trailing line break.
fn read_password_file(path: &Path) -> Result<String> {
    use std::os::unix::fs::MetadataExt;

    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| {
        Error::new(ErrorKind::Credentials, format!("cannot read the RabbitMQ password file {shown}: {e}"))
    })?;
    if !meta.is_file() {
        return Err(Error::new(
            ErrorKind::Credentials,
            format!("the RabbitMQ password file {shown} is not a regular file"),
        ));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    access_problem(meta.uid(), meta.mode(), euid).map_or(Ok(()), |why| {
        Err(Error::new(ErrorKind::Credentials, format!("the RabbitMQ password file {shown} {why}")))
    })?;
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::new(ErrorKind::Credentials, format!("cannot read the RabbitMQ password file {shown}: {e}"))
    })?;
    let password = text.strip_suffix('\n').map_or(text.as_str(), |t| t.strip_suffix('\r').unwrap_or(t));
    if password.is_empty() {
        return Err(Error::new(ErrorKind::Credentials, format!("the RabbitMQ password file {shown} is empty")));
    }
    Ok(password.to_owned())
}

/// Why a file of owner `uid` and `mode` must not hold a password read by user `euid`, if it must
/// not: PostgreSQL's rule for `ssl_key_file`.
fn access_problem(uid: u32, mode: u32, euid: u32) -> Option<&'static str> {
    let permissions = mode & 0o777;
    if uid == euid {
        (permissions & 0o077 != 0).then_some("has group or world access; it must be mode 0600 (u=rw) or less")
    } else if uid == 0 {
        (permissions & 0o037 != 0)
            .then_some("is owned by root and has world access or group write access; it must be mode 0640 or less")
    } else {
        Some("must be owned by the user running this process, or by root")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(content: &str, mode: u32) -> tempfile_like::TempFile {
        tempfile_like::TempFile::new(content, mode)
    }

    /// A file in the system's temp dir, removed on drop (no extra crate for one test helper).
    mod tempfile_like {
        use std::os::unix::fs::PermissionsExt;
        use std::path::PathBuf;
        use std::sync::atomic::{AtomicU32, Ordering};

        static NEXT: AtomicU32 = AtomicU32::new(0);

        pub(super) struct TempFile(pub(super) PathBuf);

        impl TempFile {
            pub(super) fn new(content: &str, mode: u32) -> Self {
                let n = NEXT.fetch_add(1, Ordering::Relaxed);
                let path = std::env::temp_dir().join(format!("trempy-credentials-test-{}-{n}", std::process::id()));
                std::fs::write(&path, content).unwrap_or_else(|e| panic!("{e}"));
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                    .unwrap_or_else(|e| panic!("{e}"));
                Self(path)
            }
        }

        impl Drop for TempFile {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn the_password_file_fills_in_the_urls_password_encoded() {
        let file = file_with("p@ss:w/rd%\n", 0o600);
        let url = resolve("amqp://trempy_source@127.0.0.1:5672/%2f", Some(&file.0)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(url, "amqp://trempy_source:p%40ss%3Aw%2Frd%25@127.0.0.1:5672/%2f");
        let parsed = Url::parse(&url).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parsed.username(), "trempy_source");
        assert_eq!(parsed.path(), "/%2f");
        let decoded = percent_encoding::percent_decode_str(parsed.password().unwrap_or_default())
            .decode_utf8_lossy()
            .into_owned();
        assert_eq!(decoded, "p@ss:w/rd%");
    }

    #[test]
    fn without_a_password_file_the_url_is_used_as_it_is() {
        assert_eq!(resolve("amqp://u:p@h/%2f", None).ok().as_deref(), Some("amqp://u:p@h/%2f"));
        assert!(holds_password("amqp://u:p@h/%2f"));
        assert!(!holds_password("amqp://u@h/%2f"));
        assert!(!holds_password("amqp:u:p@h"));
    }

    #[test]
    fn a_password_file_readable_by_others_is_refused() {
        for mode in [0o644, 0o640, 0o604, 0o660] {
            let file = file_with("secret", mode);
            let err =
                resolve("amqp://u@h/%2f", Some(&file.0)).err().unwrap_or_else(|| panic!("mode {mode:o} accepted"));
            assert!(err.message().contains("group or world access"), "{err}");
            assert!(!err.message().contains("secret"));
        }
        let file = file_with("secret", 0o400);
        assert!(resolve("amqp://u@h/%2f", Some(&file.0)).is_ok());
    }

    #[test]
    fn ownership_follows_postgresqls_rule_for_key_files() {
        assert_eq!(access_problem(1000, 0o100600, 1000), None);
        assert!(access_problem(1000, 0o100640, 1000).is_some());
        assert_eq!(access_problem(0, 0o100640, 1000), None);
        assert!(access_problem(0, 0o100644, 1000).is_some());
        assert!(access_problem(0, 0o100660, 1000).is_some());
        assert!(access_problem(1001, 0o100600, 1000).is_some());
    }

    #[test]
    fn a_password_given_twice_an_empty_file_or_a_missing_user_is_refused_without_echoing_anything() {
        let file = file_with("secret\n", 0o600);
        let twice = resolve("amqp://u:other@h/%2f", Some(&file.0)).err().unwrap_or_else(|| panic!("accepted"));
        assert!(
            twice.message().contains("remove the password from the URL") && !twice.message().contains("other"),
            "{twice}"
        );
        let no_user = resolve("amqp://h/%2f", Some(&file.0)).err().unwrap_or_else(|| panic!("accepted"));
        assert!(no_user.message().contains("names no user"), "{no_user}");
        let empty = file_with("\n", 0o600);
        assert!(resolve("amqp://u@h/%2f", Some(&empty.0)).is_err());
        let malformed = resolve("amqp:u:hunter2@h", Some(&file.0)).err().unwrap_or_else(|| panic!("accepted"));
        assert!(!malformed.message().contains("hunter2"), "{malformed}");
        let missing = resolve("amqp://u@h/%2f", Some(Path::new("/nonexistent/trempy-password")))
            .err()
            .unwrap_or_else(|| panic!("accepted"));
        assert!(missing.message().contains("/nonexistent/trempy-password"), "{missing}");
    }
}
