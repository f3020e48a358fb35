//! Fuzzes LSN parsing: it must never panic, and whatever parses must print
//! back to text that parses to the same LSN.

#![no_main]

use libfuzzer_sys::fuzz_target;
use trempy_protocol::lsn::Lsn;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Lsn::parse(text) {
        Ok(lsn) => {
            let printed = lsn.to_string();
            assert_eq!(Lsn::parse(&printed), Ok(lsn));
            // Only leading zeros and letter case may differ from the input.
            let (high, low) = text.split_once('/').unwrap_or_default();
            let strip = |s: &str| {
                let s = s.trim_start_matches('0');
                if s.is_empty() { "0".to_owned() } else { s.to_ascii_uppercase() }
            };
            assert_eq!(printed, format!("{}/{}", strip(high), strip(low)));
        }
        Err(error) => {
            assert_eq!(error.kind(), trempy_protocol::ErrorKind::InvalidLsn);
        }
    }
});
