//! Cause chains that are safe to walk: an error keeps what caused it (`source()`), as text with
//! every password masked. A library's error may quote a URL or DSN with its password (an AMQP
//! URI parser echoes the whole URL); keeping the library's error itself would let anything that
//! walks `source()` or prints `{:?}` show it, so only its redacted text travels, link by link.

use std::fmt;

use crate::redact::redact;

/// One link of a cause chain: a redacted message and what caused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    message: String,
    next: Option<Box<Cause>>,
}

impl Cause {
    /// The chain of `err`: its own message, then its sources', each redacted (a link whose text
    /// repeats its predecessor's is dropped).
    pub fn chain(err: &(dyn std::error::Error + 'static)) -> Box<Cause> {
        let mut messages = vec![redact(&err.to_string())];
        let mut at = err.source();
        while let Some(source) = at {
            let message = redact(&source.to_string());
            if messages.last() != Some(&message) {
                messages.push(message);
            }
            at = source.source();
        }
        let mut chain: Option<Box<Cause>> = None;
        for message in messages.into_iter().rev() {
            chain = Some(Box::new(Cause { message, next: chain }));
        }
        chain.unwrap_or_else(|| Box::new(Cause { message: String::new(), next: None }))
    }

    /// The redacted message of this link.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.next.as_deref().map(|c| c as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[derive(Debug)]
    struct Outer(Inner);
    #[derive(Debug)]
    struct Inner;

    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("cannot connect")
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
    impl fmt::Display for Inner {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("invalid URL 'amqp://trempy:s3cret@rabbit:5672/%2f'")
        }
    }
    impl std::error::Error for Inner {}

    #[test]
    fn every_link_is_kept_and_no_password() {
        let chain = Cause::chain(&Outer(Inner));
        assert_eq!(chain.message(), "cannot connect");
        let inner = chain.source().map(ToString::to_string).unwrap_or_default();
        assert!(inner.contains("rabbit:5672") && !inner.contains("s3cret"), "{inner}");
        assert!(chain.source().and_then(|s| s.source()).is_none());
        assert!(!format!("{chain:?}").contains("s3cret"));
    }
}
