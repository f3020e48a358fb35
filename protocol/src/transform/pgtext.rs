//! PostgreSQL values in their text output form (`DateStyle = ISO`), classified by the
//! `format_type()` name of their column. Shared by filters and transformations.
//!
//! Nothing here panics: a text that does not parse yields `None`.

use std::cmp::Ordering;

/// How a column's values are read, from its `format_type()` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// `smallint`, `integer`, `bigint`.
    Int,
    /// `numeric`, `numeric(p,s)`.
    Numeric,
    /// `real`, `double precision`.
    Float,
    /// `text`, `character varying(n)`, `varchar`, `name`.
    Text,
    /// `character(n)`: blank-padded, trailing blanks are insignificant.
    Char,
    /// `boolean`.
    Bool,
    /// `date`.
    Date,
    /// `timestamp[(p)] without time zone`.
    Timestamp,
    /// `timestamp[(p)] with time zone`.
    TimestampTz,
    /// `time[(p)] without time zone`.
    Time,
    /// Anything else (uuid, json, enums, domains, arrays, …): compared as exact text.
    Other,
}

impl Class {
    /// The class of a `format_type()` name.
    pub(crate) fn of(type_name: &str) -> Class {
        let t = type_name.trim();
        if t.starts_with('"') || t.ends_with("[]") {
            return Class::Other;
        }
        let base = crate::typename::without_modifiers(t);
        match base.as_str() {
            "smallint" | "integer" | "bigint" => Class::Int,
            "numeric" | "decimal" => Class::Numeric,
            "real" | "double precision" => Class::Float,
            "text" | "character varying" | "varchar" | "name" => Class::Text,
            "character" | "char" | "bpchar" => Class::Char,
            "boolean" => Class::Bool,
            "date" => Class::Date,
            "timestamp without time zone" | "timestamp" => Class::Timestamp,
            "timestamp with time zone" | "timestamptz" => Class::TimestampTz,
            "time without time zone" | "time" => Class::Time,
            _ => Class::Other,
        }
    }

    /// Numbers: integer, numeric, real, double precision.
    pub(crate) fn is_number(self) -> bool {
        matches!(self, Class::Int | Class::Numeric | Class::Float)
    }

    /// Character strings.
    pub(crate) fn is_text(self) -> bool {
        matches!(self, Class::Text | Class::Char)
    }

    /// Dates and timestamps (the `date_*` operators, `format_date`, `extract_*`).
    pub(crate) fn is_temporal(self) -> bool {
        matches!(self, Class::Date | Class::Timestamp | Class::TimestampTz)
    }
}

// ---------------------------------------------------------------------------------------------
// Exact decimals of any length.

/// A finite decimal number, exact, of any length. Normalised: no leading zeros in `int`, no
/// trailing zeros in `frac`, and zero is never negative.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Dec {
    neg: bool,
    int: String,
    frac: String,
}

/// Largest decimal exponent accepted in `1.5e-7` style input (PostgreSQL's double precision
/// output stays far below; this bounds the length of the expanded digits).
const MAX_EXPONENT: i64 = 400;

impl Dec {
    /// Parses `[+-]digits[.digits][e[+-]digits]` (at least one digit).
    pub(crate) fn parse(s: &str) -> Option<Dec> {
        let (neg, rest) = match s.as_bytes().first() {
            Some(b'-') => (true, &s[1..]),
            Some(b'+') => (false, &s[1..]),
            _ => (false, s),
        };
        let (mantissa, exponent) = match rest.find(['e', 'E']) {
            Some(at) => {
                let exp = &rest[at + 1..];
                let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
                if digits.is_empty() || digits.len() > 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                let value: i64 = exp.parse().ok()?;
                if value.abs() > MAX_EXPONENT {
                    return None;
                }
                (&rest[..at], value)
            }
            None => (rest, 0),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        if int.is_empty() && frac.is_empty() {
            return None;
        }
        if !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
            return None;
        }
        let digits: String = format!("{int}{frac}");
        let point = i64::try_from(int.len()).ok()? + exponent;
        let (int, frac) = if point <= 0 {
            (String::new(), format!("{}{digits}", "0".repeat(usize::try_from(-point).ok()?)))
        } else {
            let point = usize::try_from(point).ok()?;
            if point >= digits.len() {
                (format!("{digits}{}", "0".repeat(point - digits.len())), String::new())
            } else {
                (digits[..point].to_owned(), digits[point..].to_owned())
            }
        };
        let int = int.trim_start_matches('0').to_owned();
        let frac = frac.trim_end_matches('0').to_owned();
        let neg = neg && !(int.is_empty() && frac.is_empty());
        Some(Dec { neg, int, frac })
    }

    fn cmp_magnitude(&self, other: &Dec) -> Ordering {
        self.int
            .len()
            .cmp(&other.int.len())
            .then_with(|| self.int.cmp(&other.int))
            .then_with(|| self.frac.cmp(&other.frac))
    }
}

impl std::fmt::Display for Dec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.neg {
            f.write_str("-")?;
        }
        f.write_str(if self.int.is_empty() { "0" } else { &self.int })?;
        if !self.frac.is_empty() {
            write!(f, ".{}", self.frac)?;
        }
        Ok(())
    }
}

impl PartialOrd for Dec {
    fn partial_cmp(&self, other: &Dec) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Dec {
    fn cmp(&self, other: &Dec) -> Ordering {
        match (self.neg, other.neg) {
            (false, true) => Ordering::Greater,
            (true, false) => Ordering::Less,
            (false, false) => self.cmp_magnitude(other),
            (true, true) => other.cmp_magnitude(self),
        }
    }
}

/// A number as PostgreSQL orders it: `-Infinity` < numbers < `Infinity` < `NaN`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Num {
    /// `-Infinity`.
    NegInf,
    /// A finite number.
    Finite(Dec),
    /// `Infinity`.
    PosInf,
    /// `NaN` (equal to itself and greater than everything, as in PostgreSQL).
    NaN,
}

impl Num {
    /// Parses a number of the given class: integers take only whole numbers without exponent;
    /// numeric and floating point also take `NaN`, `Infinity`, `-Infinity` (any case, `inf` too).
    pub(crate) fn parse(s: &str, class: Class) -> Option<Num> {
        if class == Class::Int {
            let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            return Dec::parse(s).map(Num::Finite);
        }
        match s.to_ascii_lowercase().as_str() {
            "nan" => Some(Num::NaN),
            "infinity" | "+infinity" | "inf" | "+inf" => Some(Num::PosInf),
            "-infinity" | "-inf" => Some(Num::NegInf),
            _ => Dec::parse(s).map(Num::Finite),
        }
    }
}

impl std::fmt::Display for Num {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Num::NegInf => f.write_str("-Infinity"),
            Num::Finite(d) => d.fmt(f),
            Num::PosInf => f.write_str("Infinity"),
            Num::NaN => f.write_str("NaN"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Booleans.

/// PostgreSQL's boolean input words (output is `t` / `f`).
pub(crate) fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "t" | "true" | "y" | "yes" | "on" | "1" => Some(true),
        "f" | "false" | "n" | "no" | "off" | "0" => Some(false),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Dates and timestamps.

/// Microseconds in a day.
pub(crate) const DAY_MICROS: i64 = 86_400_000_000;

/// Largest year accepted (PostgreSQL's date range ends in 5874897).
const MAX_YEAR: i64 = 5_874_897;

/// A point in time as PostgreSQL orders it. `At` is microseconds since 1970-01-01 00:00:00; for
/// values without a time zone it is their wall-clock reading taken as UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Stamp {
    /// `-infinity`.
    NegInf,
    /// A finite instant.
    At(i64),
    /// `infinity`.
    PosInf,
}

/// A parsed date or timestamp text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DateTime {
    /// The instant (the offset already subtracted).
    pub(crate) stamp: Stamp,
    /// A time of day was given.
    pub(crate) has_time: bool,
    /// An offset was given (`+05:30`, `Z`).
    pub(crate) has_offset: bool,
}

/// Days from 1970-01-01 to the given proleptic Gregorian date (year 0 = 1 BC).
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian date of a day number (inverse of [`days_from_civil`]).
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, u32::try_from(m).unwrap_or(1), u32::try_from(d).unwrap_or(1))
}

fn is_leap(y: i64) -> bool {
    y.rem_euclid(4) == 0 && (y.rem_euclid(100) != 0 || y.rem_euclid(400) == 0)
}

/// Days in a month.
pub(crate) fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap(y) => 29,
        _ => 28,
    }
}

/// Broken-down wall-clock fields of a finite instant (UTC for `timestamptz`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fields {
    pub(crate) year: i64,
    pub(crate) month: u32,
    pub(crate) day: u32,
    pub(crate) hour: u32,
    pub(crate) minute: u32,
    pub(crate) second: u32,
    pub(crate) micro: u32,
}

impl Fields {
    pub(crate) fn of(micros: i64) -> Fields {
        let days = micros.div_euclid(DAY_MICROS);
        let rest = micros.rem_euclid(DAY_MICROS);
        let (year, month, day) = civil_from_days(days);
        let secs = rest / 1_000_000;
        let part = |v: i64| u32::try_from(v).unwrap_or(0);
        Fields {
            year,
            month,
            day,
            hour: part(secs / 3600),
            minute: part(secs / 60 % 60),
            second: part(secs % 60),
            micro: part(rest % 1_000_000),
        }
    }

    /// Days since 1970-01-01.
    pub(crate) fn days(&self) -> i64 {
        days_from_civil(self.year, self.month, self.day)
    }

    /// 0 = Sunday.
    pub(crate) fn weekday(&self) -> u32 {
        u32::try_from((self.days() + 4).rem_euclid(7)).unwrap_or(0)
    }

    /// 1-based day of the year.
    pub(crate) fn day_of_year(&self) -> u32 {
        u32::try_from(self.days() - days_from_civil(self.year, 1, 1) + 1).unwrap_or(1)
    }

    /// Microseconds since midnight.
    pub(crate) fn time_micros(&self) -> i64 {
        (i64::from(self.hour) * 3600 + i64::from(self.minute) * 60 + i64::from(self.second)) * 1_000_000
            + i64::from(self.micro)
    }

    /// The year as PostgreSQL's `extract(year …)` reports it (no year 0: 1 BC is -1).
    pub(crate) fn pg_year(&self) -> i64 {
        if self.year <= 0 { self.year - 1 } else { self.year }
    }

    /// `YYYY-MM-DD` (with ` BC` for years before 1).
    pub(crate) fn date_text(&self) -> String {
        let (y, bc) = if self.year <= 0 { (1 - self.year, " BC") } else { (self.year, "") };
        format!("{y:04}-{:02}-{:02}{bc}", self.month, self.day)
    }

    /// `YYYY-MM-DD HH:MM:SS[.ffffff]` (with ` BC` for years before 1).
    pub(crate) fn timestamp_text(&self) -> String {
        let (y, bc) = if self.year <= 0 { (1 - self.year, " BC") } else { (self.year, "") };
        let mut s =
            format!("{y:04}-{:02}-{:02} {:02}:{:02}:{:02}", self.month, self.day, self.hour, self.minute, self.second);
        if self.micro != 0 {
            let frac = format!("{:06}", self.micro);
            s.push('.');
            s.push_str(frac.trim_end_matches('0'));
        }
        s.push_str(bc);
        s
    }
}

fn digits_value(s: &str) -> Option<i64> {
    if s.is_empty() || s.len() > 9 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parses `HH:MM[:SS[.ffffff]]` into microseconds since midnight; `24:00:00` is allowed only
/// when `allow_24` (a `time` value).
pub(crate) fn parse_time(s: &str, allow_24: bool) -> Option<i64> {
    let mut parts = s.splitn(3, ':');
    let hour = parts.next().filter(|p| p.len() == 2).and_then(digits_value)?;
    let minute = parts.next().filter(|p| p.len() == 2).and_then(digits_value)?;
    let (second, micro) = match parts.next() {
        None => (0, 0),
        Some(sec) => {
            let (whole, frac) = sec.split_once('.').unwrap_or((sec, ""));
            if whole.len() != 2 || frac.len() > 6 || (sec.contains('.') && frac.is_empty()) {
                return None;
            }
            let micro = if frac.is_empty() { 0 } else { digits_value(&format!("{frac:0<6}"))? };
            (digits_value(whole)?, micro)
        }
    };
    let is_24 = hour == 24 && minute == 0 && second == 0 && micro == 0;
    if (hour > 23 && !(allow_24 && is_24)) || minute > 59 || second > 59 {
        return None;
    }
    Some(((hour * 60 + minute) * 60 + second) * 1_000_000 + micro)
}

/// Parses an offset: `Z`, `+hh`, `+hhmm`, `+hh:mm`, `+hh:mm:ss` (also `-`). Seconds east of UTC.
fn parse_offset(s: &str) -> Option<i64> {
    if s == "Z" || s == "z" {
        return Some(0);
    }
    let sign = match s.as_bytes().first() {
        Some(b'+') => 1,
        Some(b'-') => -1,
        _ => return None,
    };
    let body = &s[1..];
    let parts: Vec<&str> = if body.contains(':') {
        body.split(':').collect()
    } else if body.len() == 4 {
        vec![&body[..2], &body[2..]]
    } else {
        vec![body]
    };
    if parts.is_empty() || parts.len() > 3 || parts.iter().any(|p| p.len() != 2) {
        return None;
    }
    let mut secs = 0;
    for (i, p) in parts.iter().enumerate() {
        let v = digits_value(p)?;
        if (i == 0 && v > 15) || (i > 0 && v > 59) {
            return None;
        }
        secs = secs * 60 + v;
    }
    for _ in parts.len()..3 {
        secs *= 60;
    }
    Some(sign * secs)
}

/// Parses `YYYY-MM-DD`, `YYYY-MM-DD HH:MM[:SS[.ffffff]][offset]` (` ` or `T` between date and
/// time), an optional trailing ` BC`, and `infinity` / `-infinity`.
pub(crate) fn parse_datetime(s: &str) -> Option<DateTime> {
    match s {
        "infinity" | "+infinity" => return Some(DateTime { stamp: Stamp::PosInf, has_time: false, has_offset: false }),
        "-infinity" => return Some(DateTime { stamp: Stamp::NegInf, has_time: false, has_offset: false }),
        _ => {}
    }
    let (s, bc) = match s.strip_suffix(" BC") {
        Some(rest) => (rest, true),
        None => (s, false),
    };
    if !s.is_ascii() {
        return None;
    }
    let (date, rest) = match s.find([' ', 'T']) {
        Some(at) => (&s[..at], Some(&s[at + 1..])),
        None => (s, None),
    };
    let mut parts = date.splitn(3, '-');
    let year = parts.next().filter(|p| p.len() >= 4).and_then(digits_value)?;
    let month = parts.next().filter(|p| p.len() == 2).and_then(digits_value)?;
    let day = parts.next().filter(|p| p.len() == 2).and_then(digits_value)?;
    if year > MAX_YEAR || year == 0 || !(1..=12).contains(&month) {
        return None;
    }
    let year = if bc { 1 - year } else { year };
    let month = u32::try_from(month).ok()?;
    let day = u32::try_from(day).ok()?;
    if day == 0 || day > days_in_month(year, month) {
        return None;
    }
    let (time, offset) = match rest {
        None => (0, None),
        Some(rest) => {
            let at = rest.find(['+', '-', 'Z', 'z']).unwrap_or(rest.len());
            let time = parse_time(&rest[..at], false)?;
            let offset = if at < rest.len() { Some(parse_offset(&rest[at..])?) } else { None };
            (time, offset)
        }
    };
    let micros = days_from_civil(year, month, day).checked_mul(DAY_MICROS)?.checked_add(time)?;
    let micros = micros.checked_sub(offset.unwrap_or(0).checked_mul(1_000_000)?)?;
    Some(DateTime { stamp: Stamp::At(micros), has_time: rest.is_some(), has_offset: offset.is_some() })
}

// ---------------------------------------------------------------------------------------------
// strftime formatting.

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"];

/// The strftime directives `format_date` understands.
pub(crate) const FORMAT_DIRECTIVES: &str = "YymdeHIpMSfbBaAjFTzZ%";

/// One piece of a compiled format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FormatItem {
    /// Text copied as is.
    Literal(String),
    /// A `%x` directive.
    Directive(char),
}

/// Compiles a strftime format; the error names the 1-based character position of a bad `%`.
pub(crate) fn compile_format(format: &str) -> Result<Vec<FormatItem>, String> {
    let mut items = Vec::new();
    let mut literal = String::new();
    let mut chars = format.chars().enumerate();
    while let Some((i, c)) = chars.next() {
        if c != '%' {
            literal.push(c);
            continue;
        }
        match chars.next() {
            Some((_, d)) if FORMAT_DIRECTIVES.contains(d) => {
                if d == '%' {
                    literal.push('%');
                } else {
                    if !literal.is_empty() {
                        items.push(FormatItem::Literal(std::mem::take(&mut literal)));
                    }
                    items.push(FormatItem::Directive(d));
                }
            }
            Some((_, d)) => {
                return Err(format!(
                    "unsupported directive %{d} at position {}; supported: {}",
                    i + 1,
                    FORMAT_DIRECTIVES.chars().map(|c| format!("%{c}")).collect::<Vec<_>>().join(" ")
                ));
            }
            None => return Err(format!("lone % at position {} (write %% for a percent sign)", i + 1)),
        }
    }
    if !literal.is_empty() {
        items.push(FormatItem::Literal(literal));
    }
    Ok(items)
}

/// Formats wall-clock fields; `utc` says the fields are UTC (for `%z` / `%Z`).
pub(crate) fn format_fields(items: &[FormatItem], f: &Fields, utc: bool) -> String {
    let mut out = String::new();
    let month = MONTHS.get((f.month as usize).wrapping_sub(1)).copied().unwrap_or("");
    let weekday = WEEKDAYS.get(f.weekday() as usize).copied().unwrap_or("");
    for item in items {
        match item {
            FormatItem::Literal(text) => out.push_str(text),
            FormatItem::Directive(d) => {
                let piece = match d {
                    'Y' => format!("{:04}", f.year),
                    'y' => format!("{:02}", f.year.rem_euclid(100)),
                    'm' => format!("{:02}", f.month),
                    'd' => format!("{:02}", f.day),
                    'e' => format!("{:>2}", f.day),
                    'H' => format!("{:02}", f.hour),
                    'I' => format!("{:02}", if f.hour.is_multiple_of(12) { 12 } else { f.hour % 12 }),
                    'p' => (if f.hour < 12 { "AM" } else { "PM" }).to_owned(),
                    'M' => format!("{:02}", f.minute),
                    'S' => format!("{:02}", f.second),
                    'f' => format!("{:06}", f.micro),
                    'b' => month.chars().take(3).collect(),
                    'B' => month.to_owned(),
                    'a' => weekday.chars().take(3).collect(),
                    'A' => weekday.to_owned(),
                    'j' => format!("{:03}", f.day_of_year()),
                    'F' => format!("{:04}-{:02}-{:02}", f.year, f.month, f.day),
                    'T' => format!("{:02}:{:02}:{:02}", f.hour, f.minute, f.second),
                    'z' => (if utc { "+0000" } else { "" }).to_owned(),
                    'Z' => (if utc { "UTC" } else { "" }).to_owned(),
                    _ => String::new(),
                };
                out.push_str(&piece);
            }
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn classes_follow_format_type_names() {
        let cases = [
            ("integer", Class::Int),
            ("numeric(10,2)", Class::Numeric),
            ("double precision", Class::Float),
            ("character varying(20)", Class::Text),
            ("character(3)", Class::Char),
            ("timestamp(3) without time zone", Class::Timestamp),
            ("timestamp with time zone", Class::TimestampTz),
            ("time without time zone", Class::Time),
            ("integer[]", Class::Other),
            ("\"My Schema\".mood", Class::Other),
            ("uuid", Class::Other),
        ];
        for (name, class) in cases {
            assert_eq!(Class::of(name), class, "{name}");
        }
    }

    #[test]
    fn decimals_compare_exactly() {
        let d = |s: &str| Dec::parse(s).unwrap();
        assert_eq!(d("1.50"), d("1.5"));
        assert_eq!(d("-0.0"), d("0"));
        assert!(d("12345678901234567890.000000000000000001") > d("12345678901234567890"));
        assert!(d("-2") < d("-1.9"));
        assert!(d("0.6") > d("0.51"));
        assert_eq!(d("1.5e-7").to_string(), "0.00000015");
        assert_eq!(d("1e+20").to_string(), "100000000000000000000");
        for bad in ["", ".", "-", "1e", "1e999999", "abc", "1.2.3", "1 "] {
            assert!(Dec::parse(bad).is_none(), "{bad:?}");
        }
        let n = |s: &str| Num::parse(s, Class::Numeric).unwrap();
        assert!(n("NaN") > n("Infinity") && n("Infinity") > n("1e300") && n("-1e300") > n("-Infinity"));
        assert!(Num::parse("1.5", Class::Int).is_none());
    }

    #[test]
    fn dates_round_trip() {
        for days in [-800_000, -1, 0, 59, 365 * 30 + 7, 2_000_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        let t = parse_datetime("2024-01-31 13:04:05.123456+05:30").unwrap();
        let Stamp::At(micros) = t.stamp else { panic!() };
        assert_eq!(Fields::of(micros).timestamp_text(), "2024-01-31 07:34:05.123456");
        assert_eq!(parse_datetime("2024-02-29T00:00").unwrap().stamp, parse_datetime("2024-02-29").unwrap().stamp);
        let bc = parse_datetime("0044-03-15 BC").unwrap();
        let Stamp::At(micros) = bc.stamp else { panic!() };
        assert_eq!(Fields::of(micros).pg_year(), -44);
        assert_eq!(Fields::of(micros).date_text(), "0044-03-15 BC");
        for bad in [
            "2023-02-29",
            "2024-13-01",
            "24-01-01",
            "2024-01-01 25:00",
            "2024-01-01 10:00+99",
            "0000-01-01",
            "2024-01-01 10:00:00.",
        ] {
            assert!(parse_datetime(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn formats_compile_and_print() {
        let items = compile_format("%d/%m/%Y %H:%M:%S.%f %a %B %j %%").unwrap();
        let Stamp::At(micros) = parse_datetime("2024-03-05 07:08:09.5").unwrap().stamp else { panic!() };
        assert_eq!(format_fields(&items, &Fields::of(micros), false), "05/03/2024 07:08:09.500000 Tue March 065 %");
        assert!(compile_format("%Q").unwrap_err().contains("%Q at position 1"));
        assert!(compile_format("ab%").unwrap_err().contains("position 3"));
    }
}
