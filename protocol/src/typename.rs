//! Type names and identifiers as a message carries them, checked before anything uses them.
//!
//! The applier writes a column's type into SQL (a cast `$1::text::<type>`, a column of a
//! `CREATE TABLE`), so a type name taken from the stream must be a type name and nothing else:
//! `int); DROP TABLE x; --` must never reach the target. [`check_type`] accepts exactly what
//! PostgreSQL's `format_type` prints (the decoding worker's source of these names), and nothing
//! that could end the type and start another clause:
//!
//! * a name: one identifier, or two joined by `.` (schema and type). An identifier is either
//!   plain (`[a-z_][a-z0-9_]*`, as `quote_identifier` leaves it) or double-quoted (any characters
//!   but NUL, `"` doubled);
//! * after the name, only the words of PostgreSQL's multi-word type names (`double precision`,
//!   `character varying`, `timestamp(3) with time zone`, `interval day to second(3)`, …), each
//!   after one space;
//! * type modifiers in parentheses directly after the name or a word: a comma-separated list of
//!   integers (`numeric(12,2)`, `numeric(5,-2)`) or plain words (`geometry(Point,4326)`);
//! * then `[]` any number of times.
//!
//! No other punctuation, no operators, no comments, no second statement can pass. The applier
//! additionally resolves a name on the target before creating a table with it.

/// The longest type name accepted (PostgreSQL prints far shorter ones).
const MAX_TYPE_LEN: usize = 1024;

/// PostgreSQL's identifier limit (NAMEDATALEN - 1), in bytes.
pub const MAX_IDENTIFIER_BYTES: usize = 63;

/// The words that may follow a type name after a space (the parts of SQL's multi-word type
/// names, as `format_type` prints them).
const TYPE_WORDS: [&str; 13] = [
    "precision",
    "varying",
    "with",
    "without",
    "time",
    "zone",
    "to",
    "year",
    "month",
    "day",
    "hour",
    "minute",
    "second",
];

/// A `format_type()` name without its type modifiers, spaces normalized:
/// `timestamp(3) with time zone` → `timestamp with time zone`, `numeric(12,2)` → `numeric`.
pub fn without_modifiers(type_name: &str) -> String {
    let mut base = String::with_capacity(type_name.len());
    let mut depth = 0_u32;
    for c in type_name.trim().chars() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            _ if depth == 0 => base.push(c),
            _ => {}
        }
    }
    base.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Checks a type name as `format_type` prints it (see the module documentation); the error says
/// what is wrong and where (1-based character position), never quoting the name.
pub fn check_type(text: &str) -> std::result::Result<(), String> {
    if text.is_empty() {
        return Err("is empty".to_owned());
    }
    if text.len() > MAX_TYPE_LEN {
        return Err(format!("is longer than {MAX_TYPE_LEN} bytes"));
    }
    let chars: Vec<char> = text.chars().collect();
    let mut p = Parser { chars: &chars, at: 0 };
    p.identifier()?;
    if p.peek() == Some('.') {
        p.at += 1;
        p.identifier()?;
    }
    p.modifiers()?;
    while p.peek() == Some(' ') {
        p.at += 1;
        let start = p.at;
        let word = p.plain().ok_or_else(|| p.unexpected())?;
        if !TYPE_WORDS.contains(&word.as_str()) {
            p.at = start;
            return Err(p.unexpected());
        }
        p.modifiers()?;
    }
    while p.peek() == Some('[') {
        p.at += 1;
        if p.peek() != Some(']') {
            return Err(p.unexpected());
        }
        p.at += 1;
    }
    if p.at < chars.len() {
        return Err(p.unexpected());
    }
    Ok(())
}

/// Checks a schema, table or column name from a message: not empty, at most
/// [`MAX_IDENTIFIER_BYTES`] bytes, no NUL (the applier always quotes it).
pub fn check_identifier(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() {
        Err("is empty".to_owned())
    } else if name.len() > MAX_IDENTIFIER_BYTES {
        Err(format!("is longer than {MAX_IDENTIFIER_BYTES} bytes"))
    } else if name.contains('\0') {
        Err("contains a NUL character".to_owned())
    } else {
        Ok(())
    }
}

struct Parser<'a> {
    chars: &'a [char],
    at: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    fn unexpected(&self) -> String {
        match self.peek() {
            Some(c) if c.is_ascii_graphic() || c == ' ' => {
                format!("is not a type name: unexpected {c:?} at position {}", self.at + 1)
            }
            Some(_) => format!("is not a type name: unexpected character at position {}", self.at + 1),
            None => "is not a type name: it ends too early".to_owned(),
        }
    }

    /// `[a-z_][a-z0-9_]*`.
    fn plain(&mut self) -> Option<String> {
        let start = self.at;
        match self.peek() {
            Some(c) if c.is_ascii_lowercase() || c == '_' => self.at += 1,
            _ => return None,
        }
        while self.peek().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
            self.at += 1;
        }
        Some(self.chars[start..self.at].iter().collect())
    }

    /// A plain or double-quoted identifier.
    fn identifier(&mut self) -> std::result::Result<(), String> {
        if self.peek() != Some('"') {
            return self.plain().map(|_| ()).ok_or_else(|| self.unexpected());
        }
        self.at += 1;
        let mut empty = true;
        loop {
            match self.peek() {
                None => return Err(self.unexpected()),
                Some('\0') => return Err(self.unexpected()),
                Some('"') if self.chars.get(self.at + 1) == Some(&'"') => self.at += 2,
                Some('"') if empty => return Err(self.unexpected()),
                Some('"') => {
                    self.at += 1;
                    return Ok(());
                }
                Some(_) => self.at += 1,
            }
            empty = false;
        }
    }

    /// Optional `(item, …)`: integers (optionally negative) or words of ASCII letters, digits
    /// and `_`, separated by `,` and at most one space.
    fn modifiers(&mut self) -> std::result::Result<(), String> {
        if self.peek() != Some('(') {
            return Ok(());
        }
        self.at += 1;
        loop {
            match self.peek() {
                Some('-') if self.chars.get(self.at + 1).is_some_and(char::is_ascii_digit) => self.at += 1,
                Some(c) if c.is_ascii_alphanumeric() || c == '_' => {}
                _ => return Err(self.unexpected()),
            }
            let numeric = self.peek().is_some_and(|c| c.is_ascii_digit());
            while self
                .peek()
                .is_some_and(|c| if numeric { c.is_ascii_digit() } else { c.is_ascii_alphanumeric() || c == '_' })
            {
                self.at += 1;
            }
            match self.peek() {
                Some(')') => {
                    self.at += 1;
                    return Ok(());
                }
                Some(',') => {
                    self.at += 1;
                    if self.peek() == Some(' ') {
                        self.at += 1;
                    }
                }
                _ => return Err(self.unexpected()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_format_type_prints_is_accepted() {
        for name in [
            "integer",
            "bigint[]",
            "text",
            "\"char\"",
            "\"char\"[]",
            "character varying",
            "character varying(20)",
            "character varying(3)[]",
            "character(1)",
            "bit varying(5)",
            "double precision",
            "double precision[]",
            "numeric(12,2)",
            "numeric(5,-2)",
            "numeric(1000,0)",
            "timestamp without time zone",
            "timestamp(3) with time zone",
            "time(6) without time zone",
            "time with time zone",
            "interval",
            "interval(3)",
            "interval year to month",
            "interval day to second(3)",
            "public.mood",
            "public.code_domain[]",
            "\"Sales \"\"EU\"\"\".mood",
            "\"My Schema\".\"My Type\"[][]",
            "public.geometry(Point,4326)",
            "public.vector(3)",
            "information_schema.cardinal_number",
            "\"ünïcode type\"",
            "_int4",
        ] {
            assert_eq!(check_type(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn anything_else_is_refused_with_a_position() {
        for (name, at) in [
            ("int); DROP TABLE public.canary; --", Some(4)),
            ("integer; SELECT 1", Some(8)),
            ("integer -- comment", Some(9)),
            ("integer /* c */", Some(9)),
            ("text COLLATE \"C\"", Some(6)),
            ("text collate \"C\"", Some(6)),
            ("integer references public.x", Some(9)),
            ("text check(true)", Some(6)),
            ("integer generated always as identity", Some(9)),
            ("numeric(1--", Some(10)),
            ("numeric(pg_sleep(1))", Some(17)),
            ("numeric(1) || 'x'", Some(12)),
            ("numeric('1')", Some(9)),
            ("a.b.c", Some(4)),
            ("Integer", Some(1)),
            ("\"\"", Some(2)),
            ("\"unterminated", None),
            ("\"nul\0\"", Some(5)),
            ("integer[", None),
            ("integer[1]", Some(9)),
            ("integer ", None),
            ("integer  precision", Some(9)),
            ("double\tprecision", Some(7)),
            ("int4\u{a0}x", Some(5)),
            ("text,x", Some(5)),
            ("(integer)", Some(1)),
            ("integer)", Some(8)),
            ("numeric(,)", Some(9)),
            ("numeric(-)", Some(9)),
            ("numeric(1,)", Some(11)),
        ] {
            let err = check_type(name).expect_err(name);
            match at {
                Some(at) => assert!(err.ends_with(&format!("at position {at}")), "{name}: {err}"),
                None => assert!(err.contains("ends too early"), "{name}: {err}"),
            }
            assert!(!err.contains("DROP") && !err.contains("canary"), "{err}");
        }
        assert_eq!(check_type(""), Err("is empty".to_owned()));
        assert!(check_type(&"a".repeat(2000)).is_err());
    }

    #[test]
    fn identifiers_are_checked_for_what_quoting_cannot_carry() {
        assert_eq!(check_identifier("Ordér s \"x\"; DROP"), Ok(()));
        assert!(check_identifier("").is_err());
        assert!(check_identifier("a\0b").is_err());
        assert!(check_identifier(&"x".repeat(64)).is_err());
        assert_eq!(check_identifier(&"x".repeat(63)), Ok(()));
    }
}
