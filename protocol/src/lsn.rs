//! PostgreSQL log sequence numbers (`pg_lsn`).
//!
//! An LSN is a 64-bit position in the write-ahead log. PostgreSQL writes it as
//! two hexadecimal halves separated by a slash, `X/Y`, where `X` is the upper
//! 32 bits and `Y` the lower 32 bits, each printed in upper case without
//! leading zeros (for example `0/16B3748`). [`Lsn`] parses and prints exactly
//! that form and (de)serializes as that string.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserialize, Deserializer, Visitor};
use serde::ser::{Serialize, Serializer};

use crate::error::{Error, ErrorKind};

/// Most hexadecimal digits PostgreSQL accepts in one half of an LSN.
const MAX_HALF_DIGITS: usize = 8;

/// A PostgreSQL log sequence number.
///
/// Ordered like the WAL positions it stands for. Its text form is PostgreSQL's
/// `X/Y` (see [`Lsn::parse`] and the [`fmt::Display`] impl); it serializes as
/// that string.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    /// The invalid / start LSN `0/0`.
    pub const ZERO: Lsn = Lsn(0);

    /// Parses PostgreSQL's `X/Y` form: two halves of 1 to 8 hexadecimal digits
    /// each (either case), separated by one `/`, and nothing else — no sign,
    /// no `0x`, no whitespace. This is what `pg_lsn` input accepts.
    ///
    /// Errors with [`ErrorKind::InvalidLsn`]; never panics.
    pub fn parse(text: &str) -> crate::Result<Lsn> {
        let Some((high, low)) = text.split_once('/') else {
            return Err(invalid(text, "it has no '/' between its two halves"));
        };
        let high = parse_half(text, high, "upper")?;
        let low = parse_half(text, low, "lower")?;
        Ok(Lsn((u64::from(high) << 32) | u64::from(low)))
    }
}

/// Parses one half of an LSN: 1 to 8 ASCII hexadecimal digits.
fn parse_half(whole: &str, half: &str, which: &str) -> crate::Result<u32> {
    if half.is_empty() {
        return Err(invalid(whole, &format!("its {which} half is empty")));
    }
    if half.len() > MAX_HALF_DIGITS {
        return Err(invalid(whole, &format!("its {which} half has more than {MAX_HALF_DIGITS} hexadecimal digits")));
    }
    let mut value: u32 = 0;
    for byte in half.bytes() {
        let digit = match byte {
            b'0'..=b'9' => byte - b'0',
            b'a'..=b'f' => byte - b'a' + 10,
            b'A'..=b'F' => byte - b'A' + 10,
            _ => {
                return Err(invalid(
                    whole,
                    &format!("its {which} half contains a character that is not a hexadecimal digit"),
                ));
            }
        };
        // At most 8 digits, so this never overflows a u32.
        value = (value << 4) | u32::from(digit);
    }
    Ok(value)
}

fn invalid(text: &str, why: &str) -> Error {
    // An LSN is not row data, but the input may be anything: quote a bounded,
    // escaped prefix of it only.
    let shown: String = text.chars().take(40).collect();
    let ellipsis = if text.chars().nth(40).is_some() { "..." } else { "" };
    Error::new(
        ErrorKind::InvalidLsn,
        format!(
            "invalid LSN {shown:?}{ellipsis}: {why}; expected the form X/Y with 1 to 8 hexadecimal digits on each side"
        ),
    )
}

impl FromStr for Lsn {
    type Err = Error;

    fn from_str(s: &str) -> crate::Result<Lsn> {
        Lsn::parse(s)
    }
}

impl fmt::Display for Lsn {
    /// Prints `X/Y` exactly as PostgreSQL prints a `pg_lsn`: upper case
    /// hexadecimal, no leading zeros, e.g. `0/16B3748`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl Serialize for Lsn {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Lsn, D::Error> {
        deserializer.deserialize_str(LsnVisitor)
    }
}

struct LsnVisitor;

impl Visitor<'_> for LsnVisitor {
    type Value = Lsn;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a PostgreSQL LSN string of the form X/Y")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Lsn, E> {
        Lsn::parse(v).map_err(|e| E::custom(e.message()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_fuzz_seeds_are_postgres_forms() {
        let forms = [("zero", "0/0"), ("short", "0/16B3748"), ("lower", "0/16b3748"), ("high", "16/B374D848")];
        crate::fuzz_seeds::check("lsn", &forms.map(|(name, text)| (name, text.as_bytes().to_vec())));
    }

    #[test]
    fn parses_postgres_forms() {
        assert_eq!(Lsn::parse("0/0").unwrap(), Lsn::ZERO);
        assert_eq!(Lsn::parse("0/16B3748").unwrap(), Lsn(0x16B_3748));
        assert_eq!(Lsn::parse("0/16b3748").unwrap(), Lsn(0x16B_3748));
        assert_eq!(Lsn::parse("16/B374D848").unwrap(), Lsn(0x16_B374_D848));
        assert_eq!(Lsn::parse("00000016/0000000a").unwrap(), Lsn(0x16_0000_000A));
        assert_eq!(Lsn::parse("FFFFFFFF/FFFFFFFF").unwrap(), Lsn(u64::MAX));
        assert_eq!(Lsn::parse("aBcD/eF").unwrap(), Lsn(0xABCD_0000_00EF));
    }

    #[test]
    fn displays_like_postgres() {
        assert_eq!(Lsn::ZERO.to_string(), "0/0");
        assert_eq!(Lsn(0x16B_3748).to_string(), "0/16B3748");
        assert_eq!(Lsn(0x16_B374_D848).to_string(), "16/B374D848");
        assert_eq!(Lsn(0x1_0000_0000).to_string(), "1/0");
        assert_eq!(Lsn(u64::MAX).to_string(), "FFFFFFFF/FFFFFFFF");
        // Values seen in the pgoutput golden capture.
        assert_eq!(Lsn(0x154_F050).to_string(), "0/154F050");
        assert_eq!(Lsn(0xAB_12CD).to_string(), "0/AB12CD");
    }

    #[test]
    fn rejects_everything_else() {
        let bad = [
            "",
            "/",
            "0",
            "0/",
            "/0",
            "0//0",
            "0/0/0",
            "123456789/0",
            "0/123456789",
            "+1/0",
            "-1/0",
            "1/+0",
            " 0/0",
            "0/0 ",
            "0 /0",
            "0/ 0",
            "g/0",
            "0/G",
            "0x1/0",
            "0/0x1",
            "\u{ff11}/0",
            "é/0",
            "0/0\0",
            "\0/0",
            "0\\0",
            "0:0",
        ];
        for text in bad {
            let err = Lsn::parse(text).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidLsn, "{text:?}");
            assert!(text.parse::<Lsn>().is_err(), "{text:?}");
        }
    }

    #[test]
    fn long_garbage_error_is_bounded() {
        let long = "z".repeat(10_000);
        let err = Lsn::parse(&long).unwrap_err();
        assert!(err.message().len() < 300, "{}", err.message());
    }

    #[test]
    fn from_str_and_ordering() {
        let a: Lsn = "0/FFFFFFFF".parse().unwrap();
        let b: Lsn = "1/0".parse().unwrap();
        assert!(a < b);
        assert_eq!(Lsn::default(), Lsn::ZERO);
        assert!(Lsn::ZERO < a);
    }

    #[test]
    fn display_parse_roundtrip_random() {
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            for value in [state, state >> 32, state & 0xFFFF, state << 32] {
                let lsn = Lsn(value);
                assert_eq!(Lsn::parse(&lsn.to_string()).unwrap(), lsn);
                assert_eq!(Lsn::parse(&lsn.to_string().to_lowercase()).unwrap(), lsn);
            }
        }
    }

    #[test]
    fn serde_as_string() {
        let lsn = Lsn(0x16_B374_D848);
        assert_eq!(serde_json::to_string(&lsn).unwrap(), "\"16/B374D848\"");
        assert_eq!(serde_json::from_str::<Lsn>("\"16/b374d848\"").unwrap(), lsn);
        let list: Vec<Lsn> = serde_json::from_str(r#"["0/0","1/2"]"#).unwrap();
        assert_eq!(list, vec![Lsn(0), Lsn(0x1_0000_0002)]);
        assert!(serde_json::from_str::<Lsn>("\"16/\"").is_err());
        assert!(serde_json::from_str::<Lsn>("12345").is_err());
        assert!(serde_json::from_str::<Lsn>("null").is_err());
        let err = serde_json::from_str::<Lsn>("\"nope\"").unwrap_err();
        assert!(err.to_string().contains("invalid LSN"), "{err}");
    }
}
