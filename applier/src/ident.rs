//! Names of target objects in SQL: every identifier quoted, every table schema-qualified. A leaf
//! module: the writers, the catalog, the loads and the schema changes all name objects through it.

/// Quotes an identifier for SQL.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `"schema"."table"`.
pub(crate) fn qualified(schema: &str, table: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(table))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_is_quoted() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(qualified("My Schema", "t"), "\"My Schema\".\"t\"");
    }
}
