//! `keel-conformance`: runs the protocol scenarios against a Durable Workflow server at a
//! URL (see the crate docs and conformance/README.md, "Checking another server").

fn main() {
    std::process::exit(keel_protocol_conformance::run_cli(std::env::args().skip(1)));
}
