//! The JSON Schema of spec files, for editors (`voidbox schema`).

use crate::model::Spec;

/// The JSON Schema (draft 7) of a spec file, pretty-printed.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(Spec);
    serde_json::to_string_pretty(&schema).expect("a schema always serializes")
}
