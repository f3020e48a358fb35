#![no_main]
//! The applier parses every message body from the queue: it must never panic.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = trempy_protocol::envelope::Envelope::parse(data);
});
