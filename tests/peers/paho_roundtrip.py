"""An MQTT client with paho-mqtt over TLS with a device certificate:
subscribe to a topic, publish to it (QoS 1), and wait for the message to
come back. Prints `received <payload>` and exits 0; exits 1 otherwise.

usage: paho_roundtrip.py HOST PORT CERT_DIR TOPIC PAYLOAD
"""

import ssl
import sys
import threading

import paho.mqtt.client as mqtt

host, port, certs, topic, payload = sys.argv[1:6]
done = threading.Event()
result = {}


def on_connect(client, userdata, flags, reason_code, properties):
    if reason_code != 0:
        print(f"connect refused: {reason_code}", file=sys.stderr)
        done.set()
        return
    client.subscribe(topic, qos=1)


def on_subscribe(client, userdata, mid, reason_codes, properties):
    client.publish(topic, payload, qos=1)


def on_message(client, userdata, message):
    result["payload"] = message.payload.decode()
    done.set()


client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-peer")
client.tls_set(
    ca_certs=f"{certs}/ca.pem",
    certfile=f"{certs}/cert.pem",
    keyfile=f"{certs}/key.pem",
    tls_version=ssl.PROTOCOL_TLS_CLIENT,
)
client.on_connect = on_connect
client.on_subscribe = on_subscribe
client.on_message = on_message
client.connect(host, int(port))
client.loop_start()
done.wait(30)
client.disconnect()
client.loop_stop()
if "payload" not in result:
    print("no message came back", file=sys.stderr)
    sys.exit(1)
print(f"received {result['payload']}")
