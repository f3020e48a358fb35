#![no_main]
//! create_task parses user-supplied settings documents: it must never panic.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(settings) = trempy_protocol::settings::TaskSettings::parse(text) {
            let _ = settings.unsupported();
        }
    }
});
