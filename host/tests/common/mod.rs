//! Helpers shared by the host's integration tests.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

pub mod appliance;
pub mod ca;

use palisade::plugins::{Limits, Plugin, Runtime, RuntimeConfig, Session};
use palisade::store::Store;

/// The component the build made for `plugin` (crate name, `-` as `_`).
pub fn component(plugin: &str) -> Vec<u8> {
    let path = format!(
        "{}/{}.wasm",
        palisade::plugins::first_party::BUILD_DIR,
        plugin.replace('-', "_")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A runtime over a state store that lives in memory.
pub fn runtime() -> Runtime {
    Runtime::new(&RuntimeConfig::default(), Store::temporary().unwrap()).unwrap()
}

/// Limits small enough that hostile plugins hit them quickly, but for the
/// deadline: a debug build on a loaded machine can take more than 100 ms
/// over a call that is no fault, and a test about another limit would then
/// test the clock instead. Tests about the deadline set a short one with
/// [`short_deadline`].
pub fn tight_limits() -> Limits {
    Limits {
        deadline_ms: 10_000,
        memory_bytes: 16 << 20,
        output_bytes: 1 << 20,
        kv_quota_bytes: 64 << 10,
        max_strikes: 3,
        ..Limits::default()
    }
}

/// [`tight_limits`] with a deadline of 100 ms, for tests about the deadline.
pub fn short_deadline() -> Limits {
    Limits {
        deadline_ms: 100,
        ..tight_limits()
    }
}

/// The records another process appends to `path`, one JSON value a line
/// (none while there is no file): the complete lines only, since the
/// writer may be partway through the last one.
pub fn json_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    complete_lines(&text)
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The lines of `text` that end in a newline.
pub fn complete_lines(text: &str) -> impl Iterator<Item = &str> {
    text.split_inclusive('\n')
        .filter_map(|l| l.strip_suffix('\n'))
}

/// The non-empty lines another process appends to `path` (a receiver's
/// log), complete ones only (none while there is no file).
pub fn text_lines(path: &std::path::Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    complete_lines(&text)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Load the plugin the build made for `plugin`.
pub fn load(runtime: &Runtime, plugin: &str, limits: Limits) -> Plugin {
    runtime.load(plugin, &component(plugin), limits).unwrap()
}

pub fn session(id: u64, device: &str) -> Session {
    Session {
        id,
        device: palisade::plugins::Device {
            id: device.into(),
            class: "thermostat".into(),
            zone: "cell-1".into(),
        },
        route: "mqtt".into(),
    }
}

fn packet(header: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![header];
    let mut n = body.len();
    loop {
        let digit = (n % 128) as u8;
        n /= 128;
        out.push(if n > 0 { digit | 0x80 } else { digit });
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

fn string(s: &str) -> Vec<u8> {
    [(s.len() as u16).to_be_bytes().as_slice(), s.as_bytes()].concat()
}

/// An MQTT 3.1.1 CONNECT from `client_id`.
pub fn mqtt_connect(client_id: &str) -> Vec<u8> {
    packet(
        0x10,
        &[string("MQTT"), vec![4, 2, 0, 60], string(client_id)].concat(),
    )
}

/// An MQTT QoS 0 PUBLISH.
pub fn mqtt_publish(topic: &str, payload: &[u8]) -> Vec<u8> {
    packet(0x30, &[string(topic), payload.to_vec()].concat())
}

#[allow(unused_imports)]
pub use appliance::{Child, free_port};

/// The path of external program `name`, which the test command installs.
/// Missing under `CI=true` is a failure; elsewhere the test says so and is
/// skipped (`None`).
pub fn program(name: &str) -> Option<std::path::PathBuf> {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(name))
        .find(|path| path.is_file());
    appliance::missing_is_fatal(found.is_some(), name);
    found
}

/// Wait until `done` holds, checking every 50 ms, for at most `seconds`.
pub fn wait_for(seconds: u64, mut done: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    while std::time::Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    done()
}

/// An MQTT 3.1.1 SUBSCRIBE (packet id 1) to `filters`, each at QoS 0.
pub fn mqtt_subscribe(filters: &[&str]) -> Vec<u8> {
    mqtt_subscribe_at(0, filters)
}

/// An MQTT 3.1.1 SUBSCRIBE (packet id 1) to `filters`, each at `qos`.
pub fn mqtt_subscribe_at(qos: u8, filters: &[&str]) -> Vec<u8> {
    let mut body = 1u16.to_be_bytes().to_vec();
    for filter in filters {
        body.extend(string(filter));
        body.push(qos);
    }
    packet(0x82, &body)
}

/// An MQTT QoS 1 PUBLISH with packet id `id`.
pub fn mqtt_publish_qos1(topic: &str, id: u16, payload: &[u8]) -> Vec<u8> {
    packet(
        0x32,
        &[string(topic), id.to_be_bytes().to_vec(), payload.to_vec()].concat(),
    )
}

/// The CoAP over UDP datagrams `scripts/record-traffic` recorded in
/// `tests/recordings/coap-udp/NAME` (`up.hex` or `down.hex`), one per line
/// in hex, as `plugin run --datagrams` reads them.
pub fn recorded_datagrams(name: &str) -> Vec<Vec<u8>> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/recordings/coap-udp")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            (0..l.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&l[i..i + 2], 16).unwrap())
                .collect()
        })
        .collect()
}

/// rsyslogd (the program at `rsyslogd`), its work files in `dir`, writing
/// each message it takes over TCP on `port` as a line of `out`; `global`
/// and `module` are added to its global settings and its imtcp module's
/// (for TLS, say).
pub fn rsyslog(
    rsyslogd: &std::path::Path,
    dir: &std::path::Path,
    port: u16,
    out: &std::path::Path,
    global: &str,
    module: &str,
) -> Child {
    let config = dir.join("rsyslog.conf");
    std::fs::write(
        &config,
        format!(
            r#"global(workDirectory="{work}" maxMessageSize="64k" {global})
module(load="imtcp" {module})
template(name="raw" type="string" string="%rawmsg%\n")
ruleset(name="siem") {{ action(type="omfile" file="{out}" template="raw") }}
input(type="imtcp" port="{port}" ruleset="siem")
"#,
            work = dir.display(),
            out = out.display(),
        ),
    )
    .unwrap();
    Child(
        std::process::Command::new(rsyslogd)
            .args(["-n", "-f"])
            .arg(&config)
            .arg("-i")
            .arg(dir.join("rsyslog.pid"))
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    )
}
