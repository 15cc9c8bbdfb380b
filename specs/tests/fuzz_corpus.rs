//! Replays the committed corpus of `specs/fuzz/` through the entry function the fuzz target
//! calls (`voidbox_spec::fuzzing::spec_parse`). The seeds are the examples plus
//! hand-written specs (JSON, typos, wrong types, anchors) in `fuzz/corpus/spec_parse/`.

use std::path::PathBuf;

#[test]
fn spec_parse_corpus() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/spec_parse");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        voidbox_spec::fuzzing::spec_parse(&std::fs::read(&path).unwrap());
        n += 1;
    }
    assert!(n > 0, "{} holds no seeds", dir.display());
}
