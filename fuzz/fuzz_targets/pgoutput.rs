//! Fuzzes the pgoutput parser: it must never panic, whatever the bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use trempy_protocol::pgoutput::{self, Message};

fuzz_target!(|data: &[u8]| {
    match pgoutput::parse(data) {
        Ok(Message::Begin(begin)) => {
            // Arbitrary timestamps must format without panicking too.
            let _ = pgoutput::timestamp_to_rfc3339(begin.commit_time);
        }
        Ok(Message::Commit(commit)) => {
            let _ = pgoutput::timestamp_to_rfc3339(commit.commit_time);
        }
        Ok(_) => {}
        Err(error) => {
            assert_eq!(error.kind(), trempy_protocol::ErrorKind::MalformedPgOutput);
        }
    }
});
