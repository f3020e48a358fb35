//! A task's rules follow renames at the source.
//!
//! Filters and transformations name source tables (`tables[]`, `table_info`) and source columns
//! (a filter's `column_name`; a transformation's `contract.column_name`, `contract.depends_on[]`,
//! `contract.column_names[]`). When a replicated table or column is renamed at the source
//! ([`crate::schema::Step::RenameTable`], [`crate::schema::Step::RenameColumn`]), the settings
//! are rewritten to name it by its new name, so that a masking transformation or a filter keeps
//! applying instead of silently stopping (or halting the task because its column "disappeared").
//!
//! The functions work on the settings document as JSON, so that everything else in it is kept
//! exactly. Names a transformation introduces (`new_column_name`, `target_column_name`, the target
//! schema and table) are target names and never rewritten. A column reference is rewritten when it
//! names the old source name; the old name cannot denote anything else at that point, since a
//! transformation cannot create or rename a column into a name the source table has.

use serde_json::Value;

/// Rewrites the settings so that every reference to the source table `from` (schema, table)
/// names `to`. Returns true when anything changed.
pub fn follow_table_rename(settings: &mut Value, from: (&str, &str), to: (&str, &str)) -> bool {
    let mut changed = false;
    let mut rename = |info: Option<&mut Value>| {
        let Some(info) = info.and_then(Value::as_object_mut) else { return };
        if info.get("schema_name").and_then(Value::as_str) == Some(from.0)
            && info.get("table_name").and_then(Value::as_str) == Some(from.1)
        {
            info.insert("schema_name".into(), Value::from(to.0));
            info.insert("table_name".into(), Value::from(to.1));
            changed = true;
        }
    };
    if let Some(tables) = settings.get_mut("tables").and_then(Value::as_array_mut) {
        tables.iter_mut().for_each(|t| rename(Some(t)));
    }
    for list in ["filters", "transformations"] {
        if let Some(rules) = settings.get_mut(list).and_then(Value::as_array_mut) {
            rules.iter_mut().for_each(|r| rename(r.get_mut("table_info")));
        }
    }
    changed
}

/// Rewrites the settings so that the rules of the source table `table` (schema, table) name its
/// column `from` as `to`. Returns true when anything changed.
pub fn follow_column_rename(settings: &mut Value, table: (&str, &str), from: &str, to: &str) -> bool {
    let of_table = |rule: &Value| {
        let info = rule.get("table_info");
        info.and_then(|i| i.get("schema_name")).and_then(Value::as_str) == Some(table.0)
            && info.and_then(|i| i.get("table_name")).and_then(Value::as_str) == Some(table.1)
    };
    let mut changed = false;
    let mut rename = |slot: Option<&mut Value>| {
        if let Some(slot) = slot
            && slot.as_str() == Some(from)
        {
            *slot = Value::from(to);
            changed = true;
        }
    };
    if let Some(filters) = settings.get_mut("filters").and_then(Value::as_array_mut) {
        for filter in filters.iter_mut().filter(|f| of_table(f)) {
            rename(filter.get_mut("settings").and_then(|s| s.get_mut("column_name")));
        }
    }
    if let Some(transformations) = settings.get_mut("transformations").and_then(Value::as_array_mut) {
        for transformation in transformations.iter_mut().filter(|t| of_table(t)) {
            let Some(contract) = transformation.get_mut("settings").and_then(|s| s.get_mut("contract")) else {
                continue;
            };
            rename(contract.get_mut("column_name"));
            for list in ["depends_on", "column_names"] {
                if let Some(names) = contract.get_mut(list).and_then(Value::as_array_mut) {
                    names.iter_mut().for_each(|n| rename(Some(n)));
                }
            }
        }
    }
    changed
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::settings::TaskSettings;

    fn settings() -> Value {
        json!({
            "task": {"task_name": "t", "replication_type": "cdc"},
            "tables": [{"schema_name": "public", "table_name": "emp", "priority": 0}, {"schema_name": "public", "table_name": "other", "priority": 0}],
            "filters": [
                {"table_info": {"schema_name": "public", "table_name": "emp"}, "settings": {"filter_type": "equals", "description": "only F", "column_name": "gender", "value": "F"}},
                {"table_info": {"schema_name": "public", "table_name": "other"}, "settings": {"filter_type": "is_not_null", "description": "", "column_name": "gender"}}
            ],
            "transformations": [
                {"table_info": {"schema_name": "public", "table_name": "emp"}, "settings": {"transformation_type": "modify_column_value", "description": "mask",
                    "contract": {"operation": "uppercase", "column_name": "gender"}, "priority": 1}},
                {"table_info": {"schema_name": "public", "table_name": "emp"}, "settings": {"transformation_type": "create_column", "description": "",
                    "contract": {"operation": "concat", "new_column_name": "gender2", "depends_on": ["id", "gender"], "separator": "-"}, "priority": 1}},
                {"table_info": {"schema_name": "public", "table_name": "emp"}, "settings": {"transformation_type": "add_primary_key", "description": "",
                    "contract": {"column_names": ["gender"]}, "priority": 0}}
            ]
        })
    }

    #[test]
    fn a_renamed_column_is_renamed_in_the_rules_of_its_table_only() {
        let mut s = settings();
        assert!(follow_column_rename(&mut s, ("public", "emp"), "gender", "sex"));
        assert_eq!(s["filters"][0]["settings"]["column_name"], "sex");
        assert_eq!(s["filters"][1]["settings"]["column_name"], "gender", "another table's filter");
        assert_eq!(s["transformations"][0]["settings"]["contract"]["column_name"], "sex");
        assert_eq!(s["transformations"][1]["settings"]["contract"]["depends_on"], json!(["id", "sex"]));
        assert_eq!(s["transformations"][1]["settings"]["contract"]["new_column_name"], "gender2", "a target name");
        assert_eq!(s["transformations"][2]["settings"]["contract"]["column_names"], json!(["sex"]));
        assert!(TaskSettings::parse(&s.to_string()).is_ok());
        // once more: nothing left to rename
        assert!(!follow_column_rename(&mut s, ("public", "emp"), "gender", "sex"));
    }

    #[test]
    fn a_renamed_table_is_renamed_in_tables_and_every_rule() {
        let mut s = settings();
        assert!(follow_table_rename(&mut s, ("public", "emp"), ("hr", "staff")));
        assert_eq!(s["tables"][0], json!({"schema_name": "hr", "table_name": "staff", "priority": 0}));
        assert_eq!(s["tables"][1]["table_name"], "other");
        assert_eq!(s["filters"][0]["table_info"], json!({"schema_name": "hr", "table_name": "staff"}));
        assert_eq!(s["filters"][1]["table_info"]["table_name"], "other");
        assert!((0..3).all(|i| s["transformations"][i]["table_info"]["table_name"] == "staff"));
        assert!(TaskSettings::parse(&s.to_string()).is_ok());
        assert!(!follow_table_rename(&mut s, ("public", "emp"), ("hr", "staff")));
        // a malformed document is left alone, never a panic
        let mut odd = json!({"tables": 3, "filters": [1, {"table_info": []}]});
        assert!(!follow_table_rename(&mut odd, ("public", "emp"), ("a", "b")));
        assert!(!follow_column_rename(&mut odd, ("public", "emp"), "a", "b"));
    }
}
