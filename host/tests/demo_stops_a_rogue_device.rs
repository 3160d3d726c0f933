//! `palisade demo`, the README's way to see Palisade work, runs as it says:
//! the rogue sensor's denied publishes never reach the upstream, it is
//! quarantined, its sessions close and it is refused; the normal sensors
//! carry on.
#![allow(clippy::unwrap_used)]

#[test]
fn the_demo_stops_the_rogue_and_keeps_the_others() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["demo", "--seconds", "6"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "finding (high) by policy: mqtt.publish denied",
        "forbidden by \"nobody pushes firmware\"",
        "action quarantine-device by policy",
        "its command session was closed by the appliance",
        "sensor-4   refused",
        "sensor-4 is quarantined in the registry",
        "Nothing the policy denied reached the upstream.",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    // The normal sensors' telemetry all went through.
    for sensor in ["sensor-1", "sensor-2", "sensor-3"] {
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(sensor) && l.contains("site/hall-a/telemetry "))
            .unwrap_or_else(|| panic!("no upstream line for {sensor}:\n{stdout}"));
        let count: u32 = line.split_whitespace().last().unwrap().parse().unwrap();
        assert!(count >= 10, "{line}");
    }
}
