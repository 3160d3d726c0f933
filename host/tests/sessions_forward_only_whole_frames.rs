//! A session forwards the bytes of complete frames only, in order, as the
//! route's parser cut them; a malformed stream or a frame over the limit
//! closes it after the frames before; silence closes it after the idle
//! timeout; past the connection limit devices are refused.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::io::{Read, Write};

use common::appliance::{
    Appliance, CountingUpstream, aioquic_publish, mosquitto_pub, require, require_python, route,
    tls_args, tls_client, wait_until,
};
use common::{mqtt_connect, mqtt_publish};

fn setup(limits: &str) -> (Appliance, CountingUpstream, std::path::PathBuf) {
    let upstream = CountingUpstream::start();
    let config = format!(
        "[limits]\n{limits}\n{}",
        route(
            "mqtt-tls",
            "mqtt",
            "tls",
            Some("mqtt"),
            &format!("127.0.0.1:{}", upstream.port)
        )
    );
    let palisade = Appliance::start(&config);
    let device = palisade.issue("frame-1", "sensor", "lab");
    (palisade, upstream, device)
}

#[test]
fn incomplete_frames_wait_and_malformed_streams_close() {
    let (palisade, upstream, device) = setup("");
    let mut tls = tls_client(palisade.addr("mqtt-tls"), &device);
    let connect = mqtt_connect("frame-1");
    let publish = mqtt_publish("lab/t", b"20.5");
    let (head, tail) = publish.split_at(5);
    tls.write_all(&[connect.as_slice(), head].concat()).unwrap();
    tls.flush().unwrap();
    // The CONNECT goes on; the first bytes of the PUBLISH wait for the rest.
    wait_until("the CONNECT reaching the upstream", || {
        upstream.bytes() >= connect.len()
    });
    tls.write_all(tail).unwrap();
    tls.flush().unwrap();
    let whole = connect.len() + publish.len();
    wait_until("the PUBLISH reaching the upstream", || {
        upstream.bytes() >= whole
    });

    // A PUBLISH, then a packet with a remaining length of five bytes: the
    // PUBLISH goes on, the session closes, the bad bytes stay here.
    let good = mqtt_publish("lab/t", b"21.0");
    tls.write_all(&[good.as_slice(), &[0x30, 0xff, 0xff, 0xff, 0xff, 0x01]].concat())
        .unwrap();
    tls.flush().unwrap();
    palisade.wait_log(|l| {
        l.contains("session closed")
            && l.contains("device=frame-1")
            && l.contains("malformed device-to-upstream stream")
    });
    let mut rest = Vec::new();
    let _ = tls.read_to_end(&mut rest);
    assert_eq!(upstream.bytes_once_ended(1), whole + good.len());
}

#[test]
fn a_frame_over_the_limit_closes_the_session() {
    let (palisade, upstream, device) = setup("max-frame-bytes = 1024");
    let mut tls = tls_client(palisade.addr("mqtt-tls"), &device);
    let connect = mqtt_connect("frame-1");
    tls.write_all(&connect).unwrap();
    tls.flush().unwrap();
    wait_until("the CONNECT reaching the upstream", || {
        upstream.bytes() >= connect.len()
    });
    // A small PUBLISH, then in the same write the start of one announcing
    // 4000 bytes: the small one goes on; the session closes without holding
    // more than the limit, and none of the big one goes on.
    let small = mqtt_publish("lab/ok", b"fine");
    let big = mqtt_publish("lab/blob", &[7u8; 4000]);
    tls.write_all(&[&small[..], &big[..600]].concat()).unwrap();
    tls.flush().unwrap();
    palisade
        .wait_log(|l| l.contains("session closed") && l.contains("frame larger than 1024 bytes"));
    let mut rest = Vec::new();
    let _ = tls.read_to_end(&mut rest);
    assert_eq!(upstream.bytes_once_ended(1), connect.len() + small.len());
}

#[test]
fn silence_closes_the_session_after_the_idle_timeout() {
    let (palisade, upstream, device) = setup("idle-timeout-secs = 1");
    let mut tls = tls_client(palisade.addr("mqtt-tls"), &device);
    let connect = mqtt_connect("frame-1");
    tls.write_all(&connect).unwrap();
    tls.flush().unwrap();
    palisade.wait_log(|l| l.contains("session closed") && l.contains("reason=idle for 1s"));
    let mut rest = Vec::new();
    let _ = tls.read_to_end(&mut rest);
    // The upstream's accept thread may lag the appliance's connect: its
    // count is final once the connection it accepted has ended.
    assert_eq!(upstream.bytes_once_ended(1), connect.len());
    assert_eq!(upstream.connections(), 1);
}

#[test]
fn devices_past_the_connection_limit_are_refused() {
    if !require_python("aioquic") {
        return;
    }
    let upstream = CountingUpstream::start();
    let addr = format!("127.0.0.1:{}", upstream.port);
    let config = format!(
        "[limits]\nmax-connections = 1\n{}{}",
        route("mqtt-tls", "mqtt", "tls", Some("mqtt"), &addr),
        route("mqtt-quic", "mqtt", "quic", Some("mqtt"), &addr)
    );
    let palisade = Appliance::start(&config);
    let device = palisade.issue("busy-1", "sensor", "lab");
    // One device holds the only connection (saying nothing, so its upstream
    // connection never opens)...
    let _held = tls_client(palisade.addr("mqtt-tls"), &device);
    palisade.wait_log(|l| l.contains("session open") && l.contains("device=busy-1"));
    // ...so a QUIC device is refused at once.
    let out = aioquic_publish(&palisade, "mqtt-quic", &device, "t", "m");
    assert!(!out.status.success());
    palisade.wait_refused(&["route=quic", "reason=connection limit reached"]);
    // So is a TLS device, and the renewal listener's quiet does not hold
    // the connection the busy listener needs.
    let mut args = tls_args(palisade.port("mqtt-tls"), &device);
    args.extend(["-t", "t", "-m", "m"].map(String::from));
    if require("mosquitto_pub") {
        assert!(!mosquitto_pub(&args).0);
        palisade.wait_refused(&["route=mqtt-tls", "reason=connection limit reached"]);
    }
    assert_eq!(upstream.connections(), 0);
}
