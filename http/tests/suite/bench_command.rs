//! `keel bench` is the keel-bench load generator inside the `keel` binary: its help exits
//! 0 and `keel --help` lists it. (The runs themselves: benches/tests/keel_bench.rs.)

use std::process::Command;

#[test]
fn keel_bench_help_exits_0_naming_the_scenarios_and_keel_help_lists_bench() {
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["bench", "--help"])
        .output()
        .expect("keel runs");
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("Usage: keel bench"), "{help}");
    for scenario in ["one-activity", "local-activity", "signal", "timer", "child"] {
        assert!(help.contains(scenario), "names {scenario}:\n{help}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["bench", "--no-such-flag"])
        .output()
        .expect("keel runs");
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .arg("--help")
        .output()
        .expect("keel runs");
    assert!(String::from_utf8_lossy(&out.stdout).contains("bench"));
}
