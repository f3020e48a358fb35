//! PostgreSQL's COPY text format: the body of full-load messages.
//!
//! Rows end with `\n`, columns are separated by `\t`, `\N` is NULL, and backslash, newline,
//! carriage return and tab inside values are escaped. [`Writer`] encodes values as the decoding
//! worker reads them; [`rows`] decodes them again (the applier needs that only when it must look
//! at values, e.g. to filter or transform; otherwise the text goes to `COPY … FROM STDIN` as is).

use crate::error::{Error, ErrorKind, Result};

/// Appends rows in COPY text format to a buffer.
#[derive(Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
    rows: u64,
    at_row_start: bool,
}

impl Writer {
    /// An empty buffer with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        Self { buf: Vec::with_capacity(capacity), rows: 0, at_row_start: true }
    }

    /// Appends one column value (`None` for NULL) to the current row.
    pub fn value(&mut self, value: Option<&[u8]>) {
        if !self.at_row_start {
            self.buf.push(b'\t');
        }
        self.at_row_start = false;
        let Some(bytes) = value else {
            self.buf.extend_from_slice(b"\\N");
            return;
        };
        let mut start = 0;
        for (i, &b) in bytes.iter().enumerate() {
            let escaped: &[u8] = match b {
                b'\\' => b"\\\\",
                b'\n' => b"\\n",
                b'\r' => b"\\r",
                b'\t' => b"\\t",
                _ => continue,
            };
            self.buf.extend_from_slice(&bytes[start..i]);
            self.buf.extend_from_slice(escaped);
            start = i + 1;
        }
        self.buf.extend_from_slice(&bytes[start..]);
    }

    /// Ends the current row.
    pub fn end_row(&mut self) {
        self.buf.push(b'\n');
        self.rows += 1;
        self.at_row_start = true;
    }

    /// Bytes written.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True when nothing was written.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Complete rows written.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Takes the data written so far and starts over.
    pub fn take(&mut self) -> Vec<u8> {
        self.rows = 0;
        self.at_row_start = true;
        std::mem::take(&mut self.buf)
    }
}

/// Decodes COPY text data into rows of `width` values. Never panics.
pub fn rows(data: &str, width: usize) -> Result<Vec<Vec<Option<String>>>> {
    let mut out = Vec::new();
    for (n, line) in data.split_terminator('\n').enumerate() {
        let row: Vec<Option<String>> = line
            .split('\t')
            .map(value)
            .collect::<Result<_>>()
            .map_err(|e| Error::new(e.kind(), format!("row {n}: {}", e.message())))?;
        if row.len() != width {
            return Err(Error::new(
                ErrorKind::MalformedCopyData,
                format!("row {n} has {} values for {width} columns", row.len()),
            ));
        }
        out.push(row);
    }
    Ok(out)
}

fn value(field: &str) -> Result<Option<String>> {
    if field == "\\N" {
        return Ok(None);
    }
    if !field.contains('\\') {
        return Ok(Some(field.to_owned()));
    }
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('t') => out.push('\t'),
            Some('b') => out.push('\u{8}'),
            Some('f') => out.push('\u{c}'),
            Some('v') => out.push('\u{b}'),
            Some(other) => {
                return Err(Error::new(ErrorKind::MalformedCopyData, format!("unsupported escape \\{other}")));
            }
            None => return Err(Error::new(ErrorKind::MalformedCopyData, "value ends with a backslash")),
        }
    }
    Ok(Some(out))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_tricky_values() {
        let values: Vec<Option<&str>> = vec![
            Some("plain"),
            None,
            Some(""),
            Some("tab\there"),
            Some("new\nline\r\n"),
            Some("back\\slash \\N"),
            Some("ünï ✓"),
        ];
        let mut w = Writer::with_capacity(64);
        for _ in 0..3 {
            for v in &values {
                w.value(v.map(str::as_bytes));
            }
            w.end_row();
        }
        assert_eq!(w.rows(), 3);
        let data = String::from_utf8(w.take()).unwrap();
        assert_eq!(w.rows(), 0);
        let decoded = rows(&data, values.len()).unwrap();
        assert_eq!(decoded.len(), 3);
        for row in decoded {
            assert_eq!(row, values.iter().map(|v| v.map(str::to_owned)).collect::<Vec<_>>());
        }
    }

    #[test]
    fn exact_encoding() {
        let mut w = Writer::with_capacity(8);
        w.value(Some(b"a\tb"));
        w.value(None);
        w.value(Some(b"\\"));
        w.end_row();
        assert_eq!(w.take(), b"a\\tb\t\\N\t\\\\\n");
    }

    #[test]
    fn bad_data_is_an_error_not_a_panic() {
        assert!(rows("a\tb\n", 3).is_err());
        assert!(rows("a\\", 1).is_err());
        assert!(rows("a\\x", 1).is_err());
        assert_eq!(rows("", 2).unwrap().len(), 0);
    }
}
