//! Removes passwords from text that may quote a connection URL or DSN, such as the message of a
//! connection error (`Invalid URL: 'amqp://user:secret@host'`), before it is logged or stored.
//!
//! Two shapes are recognised anywhere in the text:
//! * the userinfo of any URL, `scheme://user:password@host…` (amqp, amqps, postgres, postgresql,
//!   or any other scheme): everything between the first `:` after `scheme://` and the **last** `@`
//!   of the URL is replaced, so a password holding unescaped `@`, `/` or `:` is covered whole;
//! * a `password=value` pair, as in a libpq key/value DSN (`host=h password='a b' …`, value
//!   unquoted up to whitespace or single-quoted with backslash escapes) or a URL query
//!   (`…?password=value&…`, up to `&`).
//!
//! Redaction errs on the side of hiding too much: a URL that has `@` later in its path or query
//! loses more than its password. Never panics.

/// What a password is replaced with.
pub const MASK: &str = "***";

/// `text` with every password it quotes replaced by [`MASK`].
pub fn redact(text: &str) -> String {
    let masked_urls = redact_urls(text);
    let masked_bare = redact_slashless_urls(&masked_urls);
    redact_password_pairs(&masked_bare)
}

/// Schemes whose URL is also recognised without `//` (`amqp:user:password@host`, which URL
/// parsers reject and then quote whole in their error message).
const BARE_SCHEMES: [&str; 4] = ["amqps:", "amqp:", "postgresql:", "postgres:"];

/// Masks the whole userinfo (user and password: with no `//` the two cannot be told apart) of a
/// `scheme:userinfo@host` for the [`BARE_SCHEMES`].
fn redact_slashless_urls(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        let scheme = BARE_SCHEMES
            .iter()
            .find(|s| bytes.get(i..i + s.len()).is_some_and(|b| b.eq_ignore_ascii_case(s.as_bytes())));
        let boundary = i == 0 || !is_scheme_char(bytes[i - 1]);
        let Some(scheme) = scheme.filter(|_| boundary) else {
            i += 1;
            continue;
        };
        let userinfo = i + scheme.len();
        if bytes[userinfo..].starts_with(b"//") {
            i = userinfo;
            continue;
        }
        let end = bytes[userinfo..].iter().position(|&b| ends_url(b)).map_or(bytes.len(), |p| userinfo + p);
        if let Some(at) = bytes[userinfo..end].iter().rposition(|&b| b == b'@').map(|p| userinfo + p)
            && at > userinfo
        {
            // ASCII delimiters: the slices below fall on character boundaries.
            out.push_str(&text[copied..userinfo]);
            out.push_str(MASK);
            copied = at;
        }
        i = end.max(userinfo);
    }
    out.push_str(&text[copied..]);
    out
}

/// Characters that end a URL quoted in a message.
fn ends_url(b: u8) -> bool {
    b.is_ascii_whitespace() || matches!(b, b'\'' | b'"' | b'<' | b'>' | b'`')
}

fn is_scheme_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.')
}

fn redact_urls(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut i = 0;
    while let Some(found) = text[i..].find("://") {
        let sep = i + found;
        let scheme_start = (0..sep).rev().take_while(|&k| is_scheme_char(bytes[k])).last();
        let authority = sep + 3;
        let end = bytes[authority..].iter().position(|&b| ends_url(b)).map_or(bytes.len(), |p| authority + p);
        if let Some(start) = scheme_start
            && bytes[start].is_ascii_alphabetic()
            && let Some(at) = bytes[authority..end].iter().rposition(|&b| b == b'@').map(|p| authority + p)
            && let Some(colon) = bytes[authority..at].iter().position(|&b| b == b':').map(|p| authority + p)
        {
            // ASCII delimiters: the slices below fall on character boundaries.
            out.push_str(&text[copied..=colon]);
            out.push_str(MASK);
            copied = at;
        }
        i = end.max(authority);
    }
    out.push_str(&text[copied..]);
    out
}

fn redact_password_pairs(text: &str) -> String {
    const KEY: &[u8] = b"password";
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut i = 0;
    while i + KEY.len() <= bytes.len() {
        let at_key = bytes[i..i + KEY.len()].eq_ignore_ascii_case(KEY);
        let boundary = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if !(at_key && boundary) {
            i += 1;
            continue;
        }
        let in_query = i > 0 && matches!(bytes[i - 1], b'?' | b'&' | b';');
        let mut j = i + KEY.len();
        while j < bytes.len() && bytes[j] == b' ' {
            j += 1;
        }
        if j >= bytes.len() || bytes[j] != b'=' {
            i += KEY.len();
            continue;
        }
        j += 1;
        while j < bytes.len() && bytes[j] == b' ' {
            j += 1;
        }
        let start = j;
        if j < bytes.len() && bytes[j] == b'\'' {
            // libpq quoting: single quotes, backslash escapes; an unterminated value runs to the end.
            j += 1;
            while j < bytes.len() && bytes[j] != b'\'' {
                j += if bytes[j] == b'\\' { 2 } else { 1 };
            }
            j = (j + 1).min(bytes.len());
        } else {
            while j < bytes.len()
                && !bytes[j].is_ascii_whitespace()
                && !(in_query && matches!(bytes[j], b'&' | b'#' | b'\'' | b'"'))
            {
                j += if bytes[j] == b'\\' && !in_query { 2 } else { 1 };
            }
            j = j.min(bytes.len());
        }
        // Move to a character boundary (a backslash may have skipped into a multi-byte char).
        while j < bytes.len() && !text.is_char_boundary(j) {
            j += 1;
        }
        if j > start {
            out.push_str(&text[copied..start]);
            out.push_str(MASK);
            copied = j;
        }
        i = j.max(i + KEY.len());
    }
    out.push_str(&text[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_without_slashes_loses_its_userinfo() {
        assert_eq!(
            redact("cannot connect to RabbitMQ: Invalid URL: 'amqp:trempy:s3cret@127.0.0.1:1/%2f'"),
            "cannot connect to RabbitMQ: Invalid URL: 'amqp:***@127.0.0.1:1/%2f'"
        );
        assert_eq!(redact("AMQPS:u:p@h and postgres:x@y"), "AMQPS:***@h and postgres:***@y");
        // not a URL: a word ending in the scheme name, or no userinfo
        assert_eq!(redact("myamqp:a@b"), "myamqp:a@b");
        assert_eq!(redact("amqp: connection refused"), "amqp: connection refused");
        assert_eq!(redact("amqp:"), "amqp:");
        // the slashed form is left to the URL rule (user kept)
        assert_eq!(redact("amqp://u:p@h"), "amqp://u:***@h");
    }

    #[test]
    fn url_passwords_are_masked() {
        let cases = [
            ("Invalid URL: 'amqp://trempy:s3cret@rabbit:5672/%2f'", "Invalid URL: 'amqp://trempy:***@rabbit:5672/%2f'"),
            ("amqps://u:p@h", "amqps://u:***@h"),
            ("connect postgres://app:pw@db/x failed", "connect postgres://app:***@db/x failed"),
            ("POSTGRESQL://app:pw@db:5432/x?sslmode=disable", "POSTGRESQL://app:***@db:5432/x?sslmode=disable"),
            // unescaped @ / : in the password: up to the last @ of the URL
            ("amqp://u:p@ss/w:rd@host/vh", "amqp://u:***@host/vh"),
            // two URLs
            ("a amqp://u:1@h b postgres://v:2@k", "a amqp://u:***@h b postgres://v:***@k"),
            // no password, no userinfo, no URL at all
            ("amqp://guest@localhost", "amqp://guest@localhost"),
            ("amqp://localhost:5672/%2f", "amqp://localhost:5672/%2f"),
            ("connection refused", "connection refused"),
            ("://u:p@h", "://u:p@h"),
            ("", ""),
        ];
        for (text, expected) in cases {
            assert_eq!(redact(text), expected, "{text}");
        }
    }

    #[test]
    fn dsn_password_pairs_are_masked() {
        let cases = [
            ("host=db user=app password=s3cret dbname=x", "host=db user=app password=*** dbname=x"),
            ("host=db password = 'a \\' b' port=5432", "host=db password = *** port=5432"),
            ("host=db PASSWORD=x", "host=db PASSWORD=***"),
            (
                "postgres://db/x?user=a&password=s3&sslmode=require",
                "postgres://db/x?user=a&password=***&sslmode=require",
            ),
            ("host=db password='unterminated", "host=db password=***"),
            // not a password key
            ("old_password=x passwordless=y", "old_password=x passwordless=y"),
            ("password authentication failed for user \"app\"", "password authentication failed for user \"app\""),
            ("password=", "password="),
        ];
        for (text, expected) in cases {
            assert_eq!(redact(text), expected, "{text}");
        }
    }

    #[test]
    fn never_panics_and_keeps_other_text() {
        let samples = ["amqp://ü:ö@ä", "password=\\", "password='\\", "x://@", "password=é\\é", "a://b:c@", "password"];
        for s in samples {
            let _ = redact(s);
        }
        assert_eq!(redact("amqp://ü:ö@ä"), "amqp://ü:***@ä");
        let mut state: u64 = 0x2545_F491_4F6C_DD1D;
        let alphabet = ['a', ':', '@', '/', '=', '\'', '\\', ' ', 'é', 'p', '&', '?'];
        for _ in 0..20_000 {
            let mut s = String::from("password=amqp://");
            for _ in 0..12 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                s.push(alphabet[(state % alphabet.len() as u64) as usize]);
            }
            let _ = redact(&s);
        }
    }
}
