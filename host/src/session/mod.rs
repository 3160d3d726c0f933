//! Sessions: one device on one route. The inspection pipeline that every
//! session runs its bytes through, the relay that connects it to the
//! device's and the upstream's sockets, and the registry of live sessions
//! that revocation and quarantine close.

mod live;
mod pipeline;
mod relay;

pub use live::{Closed, HangUp, LiveSessions, Membership};
pub use pipeline::{FrameSpan, Inspected, POLICY, Pipeline, PipelineError, Verdict};
pub use relay::{
    BufferBudget, Enforcer, Forwarded, Guards, NoEnforcer, RelayError, RelaySettings, Side,
    first_bytes, relay,
};

/// What the session tests run: an MQTT parser, a session, its frames.
#[cfg(test)]
pub(crate) mod testing {
    #![allow(clippy::unwrap_used)]

    use crate::plugins::{Device, Limits, Plugin, Runtime, RuntimeConfig, Session, first_party};
    use crate::store::Store;

    pub(crate) fn runtime() -> Runtime {
        Runtime::new(&RuntimeConfig::default(), Store::temporary().unwrap()).unwrap()
    }

    /// The first-party MQTT parser, loaded in `runtime`.
    pub(crate) fn mqtt(runtime: &Runtime) -> Plugin {
        let component = first_party::component("mqtt").unwrap();
        runtime.load("mqtt", component, Limits::default()).unwrap()
    }

    /// A sensor's session on the `mqtt` route.
    pub(crate) fn session() -> Session {
        Session {
            id: 1,
            device: Device {
                id: "sensor-1".into(),
                class: "sensor".into(),
                zone: "cell-1".into(),
            },
            route: "mqtt".into(),
        }
    }

    /// An MQTT 3.1.1 PUBLISH at QoS 0.
    pub(crate) fn publish(topic: &str, payload: &[u8]) -> Vec<u8> {
        let mut body = (topic.len() as u16).to_be_bytes().to_vec();
        body.extend_from_slice(topic.as_bytes());
        body.extend_from_slice(payload);
        let mut packet = vec![0x30];
        let mut n = body.len();
        loop {
            let digit = (n % 128) as u8;
            n /= 128;
            packet.push(if n > 0 { digit | 0x80 } else { digit });
            if n == 0 {
                break;
            }
        }
        packet.extend(body);
        packet
    }
}
