//! The streaming replication protocol around pgoutput, as a task worker speaks it on its
//! replication connection to its own server (`START_REPLICATION SLOT … LOGICAL`): the CopyData
//! messages the walsender sends ([`parse`]: `XLogData` carrying one pgoutput message, primary
//! keepalive), the standby status update the worker answers with ([`status_update`]), and which
//! position the worker may confirm ([`Confirmations`]).
//!
//! Layouts from the PostgreSQL 15 documentation, "Streaming Replication Protocol". Integers are
//! in network byte order. The parser never panics; it borrows the pgoutput bytes from its input.

use std::collections::VecDeque;

use crate::error::{Error, ErrorKind};
use crate::lsn::Lsn;

/// One CopyData message from the walsender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerMessage<'a> {
    /// `w`: WAL data; for a logical slot, one output plugin message (`data`), which
    /// [`crate::pgoutput::parse`] reads.
    XLogData {
        /// The LSN the message was decoded at.
        wal_start: Lsn,
        /// The server's end of WAL when it was sent (for logical decoding the same as `wal_start`).
        wal_end: Lsn,
        /// When the server sent it, in microseconds since 2000-01-01 00:00:00 UTC.
        send_time: i64,
        /// The output plugin's message.
        data: &'a [u8],
    },
    /// `k`: primary keepalive.
    Keepalive {
        /// Everything before this position has been decoded and sent: with nothing in flight,
        /// the slot may be confirmed up to here.
        wal_end: Lsn,
        /// When the server sent it, in microseconds since 2000-01-01 00:00:00 UTC.
        send_time: i64,
        /// The server asks for a status update right away (it will drop the connection after
        /// `wal_sender_timeout` without one).
        reply_requested: bool,
    },
}

const XLOG_DATA_HEADER: usize = 1 + 8 + 8 + 8;
const KEEPALIVE_LEN: usize = 1 + 8 + 8 + 1;

/// Reads one CopyData payload. Errors (kind [`ErrorKind::MalformedPgOutput`]) on a truncated
/// message or an unknown tag.
pub fn parse(buf: &[u8]) -> Result<ServerMessage<'_>, Error> {
    let malformed = |what: &str| {
        Error::new(ErrorKind::MalformedPgOutput, format!("replication message: {what} ({} bytes)", buf.len()))
    };
    match buf.first() {
        Some(b'w') => {
            if buf.len() < XLOG_DATA_HEADER {
                return Err(malformed("truncated XLogData header"));
            }
            Ok(ServerMessage::XLogData {
                wal_start: Lsn(be_u64(buf, 1)),
                wal_end: Lsn(be_u64(buf, 9)),
                send_time: be_i64(buf, 17),
                data: buf.get(XLOG_DATA_HEADER..).unwrap_or_default(),
            })
        }
        Some(b'k') => {
            if buf.len() != KEEPALIVE_LEN {
                return Err(malformed("keepalive of the wrong length"));
            }
            Ok(ServerMessage::Keepalive {
                wal_end: Lsn(be_u64(buf, 1)),
                send_time: be_i64(buf, 9),
                reply_requested: buf.get(17).is_some_and(|&b| b != 0),
            })
        }
        Some(&tag) => Err(malformed(&format!("unknown message tag 0x{tag:02x}"))),
        None => Err(malformed("empty message")),
    }
}

fn be_u64(buf: &[u8], at: usize) -> u64 {
    let mut bytes = [0_u8; 8];
    if let Some(slice) = buf.get(at..at + 8) {
        bytes.copy_from_slice(slice);
    }
    u64::from_be_bytes(bytes)
}

fn be_i64(buf: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(be_u64(buf, at).to_be_bytes())
}

/// The standby status update (`r`): `write` is what was received, `flush` and `apply` what the
/// slot may be confirmed up to (the walsender moves `confirmed_flush_lsn` to `flush`); `now` in
/// microseconds since 2000-01-01; `reply` asks the server to answer with a keepalive.
pub fn status_update(write: Lsn, flush: Lsn, apply: Lsn, now: i64, reply: bool) -> [u8; 34] {
    let mut out = [0_u8; 34];
    out[0] = b'r';
    out[1..9].copy_from_slice(&write.0.to_be_bytes());
    out[9..17].copy_from_slice(&flush.0.to_be_bytes());
    out[17..25].copy_from_slice(&apply.0.to_be_bytes());
    out[25..33].copy_from_slice(&now.to_be_bytes());
    out[33] = u8::from(reply);
    out
}

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01 00:00:00 UTC).
const POSTGRES_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

/// Microseconds since 2000-01-01 00:00:00 UTC for a Unix time in microseconds.
pub fn postgres_time(unix_micros: i64) -> i64 {
    unix_micros.saturating_sub(POSTGRES_EPOCH_UNIX_MICROS)
}

/// Which position the slot may be confirmed up to.
///
/// The slot's confirmed position may pass a transaction only once RabbitMQ has confirmed every
/// message of it: a worker that restarts decodes again from there, and whatever lies before it
/// is never decoded again. Messages are handed to the AMQP thread in stream order, and each
/// flush request ([`Confirmations::requested`]) covers everything handed over before it, so the
/// requests are answered in order.
///
/// When nothing is owed (no flush request pending, no transaction open or assembled but not yet
/// handed over), the server's last keepalive position may be confirmed too: the WAL up to it
/// held nothing for the task (other tables, other databases), and confirming it keeps an idle
/// task from retaining WAL.
#[derive(Debug, Clone)]
pub struct Confirmations {
    /// Confirmed so far (the slot's position when streaming started, then what RabbitMQ confirmed).
    confirmed: Lsn,
    /// Flush requests not answered yet: the end LSN each covers, oldest first.
    pending: VecDeque<Lsn>,
    /// End of the last complete transaction received (handed over or still being assembled).
    received: Lsn,
    /// Position of the last keepalive.
    keepalive: Lsn,
    /// What the last status update said.
    reported: Lsn,
}

impl Confirmations {
    /// Starts from the slot's confirmed position.
    pub fn new(slot_confirmed: Lsn) -> Self {
        Self {
            confirmed: slot_confirmed,
            pending: VecDeque::new(),
            received: slot_confirmed,
            keepalive: slot_confirmed,
            reported: slot_confirmed,
        }
    }

    /// A complete transaction ending at `end` was received.
    pub fn received(&mut self, end: Lsn) {
        self.received = self.received.max(end);
    }

    /// Everything received so far was handed to the AMQP thread and a flush requested, covering
    /// up to the last complete transaction.
    pub fn requested(&mut self) {
        self.pending.push_back(self.received);
    }

    /// Number of flush requests not answered yet.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The oldest flush request was answered: RabbitMQ confirmed everything it covers. Returns
    /// the end LSN it covered.
    pub fn answered(&mut self) -> Option<Lsn> {
        let end = self.pending.pop_front()?;
        self.confirmed = self.confirmed.max(end);
        Some(end)
    }

    /// The server's keepalive said it sent everything before `wal_end`.
    pub fn keepalive(&mut self, wal_end: Lsn) {
        self.keepalive = self.keepalive.max(wal_end);
    }

    /// What the slot may be confirmed up to now. `open` is true while a transaction is partly
    /// received or assembled transactions wait to be handed over.
    pub fn flush_position(&self, open: bool) -> Lsn {
        let owed = open || !self.pending.is_empty() || self.received > self.confirmed;
        if owed { self.confirmed } else { self.confirmed.max(self.keepalive) }
    }

    /// The status update to send, if the position moved since the last one (or `force`).
    pub fn report(&mut self, open: bool, force: bool) -> Option<Lsn> {
        let flush = self.flush_position(open);
        if flush > self.reported || force {
            self.reported = self.reported.max(flush);
            Some(self.reported)
        } else {
            None
        }
    }

    /// Forgets the flush requests (the AMQP thread failed and the stream starts again from the
    /// slot): what was confirmed stays confirmed.
    pub fn rewind(&mut self) {
        self.pending.clear();
        self.received = self.confirmed;
        // a keepalive received after a lost transaction must not confirm past it
        self.keepalive = self.confirmed;
    }

    /// Confirmed so far.
    pub fn confirmed(&self) -> Lsn {
        self.confirmed
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn xlog_data(start: u64, data: &[u8]) -> Vec<u8> {
        let mut buf = vec![b'w'];
        buf.extend_from_slice(&start.to_be_bytes());
        buf.extend_from_slice(&start.to_be_bytes());
        buf.extend_from_slice(&700_000_000_i64.to_be_bytes());
        buf.extend_from_slice(data);
        buf
    }

    fn keepalive(end: u64, reply: bool) -> Vec<u8> {
        let mut buf = vec![b'k'];
        buf.extend_from_slice(&end.to_be_bytes());
        buf.extend_from_slice(&(-5_i64).to_be_bytes());
        buf.push(u8::from(reply));
        buf
    }

    fn goldens() -> Vec<(&'static str, Vec<u8>)> {
        vec![
            ("xlogdata_begin", xlog_data(0x0100_0028, b"B\0\0\0\0\x01\0\0\x60\0\0\0\0\0\0\0\0\0\0\x02\xe8")),
            ("xlogdata_empty", xlog_data(7, b"")),
            ("keepalive_reply", keepalive(0x0200_0000, true)),
            ("keepalive_quiet", keepalive(9, false)),
            ("status_update", status_update(Lsn(1), Lsn(2), Lsn(3), 4, false).to_vec()),
        ]
    }

    #[test]
    fn golden_messages_parse_and_are_the_fuzz_seeds() {
        let seeds = goldens();
        crate::fuzz_seeds::check("replication", &seeds);
        let data = xlog_data(0x0100_0028, b"B..");
        assert_eq!(
            parse(&data).unwrap(),
            ServerMessage::XLogData {
                wal_start: Lsn(0x0100_0028),
                wal_end: Lsn(0x0100_0028),
                send_time: 700_000_000,
                data: b"B.."
            }
        );
        assert_eq!(
            parse(&keepalive(0x0200_0000, true)).unwrap(),
            ServerMessage::Keepalive { wal_end: Lsn(0x0200_0000), send_time: -5, reply_requested: true }
        );
        assert!(matches!(
            parse(&keepalive(9, false)).unwrap(),
            ServerMessage::Keepalive { reply_requested: false, .. }
        ));
    }

    #[test]
    fn truncated_and_unknown_messages_are_errors_not_panics() {
        for bad in [&b""[..], b"w", b"w\0\0\0\0\0\0\0\0\0\0", b"k\0\0", b"x123", &keepalive(1, false)[..17]] {
            let err = parse(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::MalformedPgOutput, "{bad:?}");
        }
        // every prefix of a good message either parses or is an error
        for message in goldens() {
            for end in 0..message.1.len() {
                let _ = parse(&message.1[..end]);
            }
        }
    }

    #[test]
    fn the_status_update_has_the_documented_layout() {
        let buf = status_update(Lsn(0x10), Lsn(0x20), Lsn(0x30), 0x40, true);
        assert_eq!(buf[0], b'r');
        assert_eq!(&buf[1..9], &0x10_u64.to_be_bytes());
        assert_eq!(&buf[9..17], &0x20_u64.to_be_bytes());
        assert_eq!(&buf[17..25], &0x30_u64.to_be_bytes());
        assert_eq!(&buf[25..33], &0x40_i64.to_be_bytes());
        assert_eq!(buf[33], 1);
        assert_eq!(postgres_time(946_684_800_000_001), 1);
    }

    #[test]
    fn a_transaction_is_confirmed_only_once_rabbitmq_confirmed_it() {
        let mut c = Confirmations::new(Lsn(100));
        c.received(Lsn(200));
        // assembled, not handed over yet: nothing past the start
        assert_eq!(c.flush_position(true), Lsn(100));
        assert_eq!(c.flush_position(false), Lsn(100), "received but not confirmed");
        c.requested();
        c.received(Lsn(300));
        c.requested();
        assert_eq!(c.pending(), 2);
        assert_eq!(c.flush_position(false), Lsn(100));
        assert_eq!(c.answered(), Some(Lsn(200)));
        assert_eq!(c.flush_position(false), Lsn(200));
        assert_eq!(c.answered(), Some(Lsn(300)));
        assert_eq!(c.flush_position(false), Lsn(300));
        assert_eq!(c.answered(), None);
    }

    #[test]
    fn a_keepalive_is_confirmed_only_when_nothing_is_owed() {
        let mut c = Confirmations::new(Lsn(100));
        c.keepalive(Lsn(500));
        assert_eq!(c.flush_position(false), Lsn(500), "idle: the WAL up to the keepalive held nothing for the task");
        assert_eq!(c.flush_position(true), Lsn(100), "a transaction is open");
        c.received(Lsn(600));
        c.keepalive(Lsn(700));
        assert_eq!(c.flush_position(false), Lsn(100), "a transaction received but not confirmed");
        c.requested();
        assert_eq!(c.flush_position(false), Lsn(100), "its flush is pending");
        c.answered();
        assert_eq!(c.flush_position(false), Lsn(700));
    }

    #[test]
    fn reports_only_move_forward() {
        let mut c = Confirmations::new(Lsn(100));
        assert_eq!(c.report(false, false), None, "nothing new");
        assert_eq!(c.report(false, true), Some(Lsn(100)), "forced: the same position again");
        c.keepalive(Lsn(50));
        assert_eq!(c.report(false, false), None, "an older keepalive moves nothing");
        c.keepalive(Lsn(150));
        assert_eq!(c.report(false, false), Some(Lsn(150)));
        assert_eq!(c.report(false, false), None);
    }

    #[test]
    fn a_rewind_forgets_what_was_not_confirmed() {
        let mut c = Confirmations::new(Lsn(100));
        c.received(Lsn(200));
        c.requested();
        c.answered();
        c.received(Lsn(300));
        c.requested();
        c.keepalive(Lsn(400));
        c.rewind();
        assert_eq!(c.pending(), 0);
        assert_eq!(c.confirmed(), Lsn(200));
        assert_eq!(c.flush_position(false), Lsn(200), "not the keepalive past the lost transaction");
    }
}
