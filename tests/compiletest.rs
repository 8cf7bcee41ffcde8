//! Compile-time behaviour of `#[websocket_subscriber]`: what compiles (`tests/ui/pass`) and the
//! errors for what does not (`tests/ui/fail`, with the expected `.stderr` beside each case).
//!
//! Regenerate the snapshots after a deliberate change with
//! `TRYBUILD=overwrite cargo test -p switchboard --test compiletest`, then read every changed
//! `.stderr`: each error must point at the offending token and say how to fix it.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
