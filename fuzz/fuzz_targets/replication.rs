//! Fuzzes the replication protocol's CopyData parser: it must never panic, and an XLogData
//! message's payload is what follows its 25-byte header.

#![no_main]

use libfuzzer_sys::fuzz_target;
use trempy_protocol::replication::{ServerMessage, parse};

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Ok(ServerMessage::XLogData { data: payload, .. }) => {
            assert_eq!(payload.len() + 25, data.len());
            // the payload goes on to the pgoutput parser, which must not panic either
            let _ = trempy_protocol::pgoutput::parse(payload);
        }
        Ok(ServerMessage::Keepalive { .. }) => assert_eq!(data.len(), 18),
        Err(error) => assert_eq!(error.kind(), trempy_protocol::ErrorKind::MalformedPgOutput),
    }
});
