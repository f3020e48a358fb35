//! `trempy.databases`: the databases of a cluster TREMpy serves, one launcher each.
//!
//! The setting is a list like `search_path`: names separated by commas, surrounding spaces
//! ignored, unquoted names folded to lower case, double-quoted names taken as written (`""` for
//! a quote); empty items and repeats are dropped.

/// Parses the setting; a malformed item (an unterminated quote, text after a quoted name) ends
/// the list, and is named in the second element.
pub fn parse(setting: &str) -> (Vec<String>, Option<String>) {
    let mut names: Vec<String> = Vec::new();
    let mut chars = setting.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut name = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            let mut closed = false;
            while let Some(c) = chars.next() {
                if c == '"' {
                    if chars.peek() == Some(&'"') {
                        chars.next();
                        name.push('"');
                    } else {
                        closed = true;
                        break;
                    }
                } else {
                    name.push(c);
                }
            }
            if !closed {
                return (names, Some(format!("unterminated quoted name \"{name}")));
            }
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
            if chars.peek().is_some_and(|c| *c != ',') {
                return (names, Some(format!("text after the quoted name \"{name}\"")));
            }
        } else {
            while let Some(c) = chars.peek().copied() {
                if c == ',' {
                    break;
                }
                name.push(c);
                chars.next();
            }
            // like PostgreSQL's identifiers: only ASCII letters are folded
            name = name.trim().to_ascii_lowercase();
        }
        if !name.is_empty() && !names.contains(&name) {
            names.push(name);
        }
        if chars.next().is_none() {
            return (names, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(setting: &str) -> Vec<String> {
        parse(setting).0
    }

    #[test]
    fn lists_like_search_path() {
        assert_eq!(names("source"), ["source"]);
        assert_eq!(names(" source , Sales,,other "), ["source", "sales", "other"]);
        assert_eq!(names("\"Sales, EU\" , \"a\"\"b\""), ["Sales, EU", "a\"b"]);
        assert_eq!(names("a, a, \"a\""), ["a"]);
        assert!(names("").is_empty() && names(" , ").is_empty());
    }

    #[test]
    fn an_unterminated_quote_is_named() {
        let (names, problem) = parse("ok, \"broken");
        assert_eq!(names, ["ok"]);
        assert!(problem.is_some_and(|p| p.contains("unterminated")));
        let (names, problem) = parse("ok, \"a\"x, later");
        assert_eq!(names, ["ok"]);
        assert!(problem.is_some_and(|p| p.contains("text after the quoted name \"a\"")));
        assert_eq!(parse("ÄÖ, Db").0, ["ÄÖ", "db"], "only ASCII letters fold");
    }
}
