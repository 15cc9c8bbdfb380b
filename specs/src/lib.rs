//! voidbox-spec: the spec file schema, validation with line/column errors, JSON Schema.
