"""MQTT over QUIC with aioquic, a QUIC stack that is not quinn: one
bidirectional stream with ALPN "mqtt" (as EMQX uses) carrying MQTT 3.1.1
CONNECT, a retained QoS 1 PUBLISH and DISCONNECT. Prints `puback` once the
broker acknowledged the message, and exits 0; exits 1 otherwise. With
`hold`, it stays connected after the PUBACK instead, until the connection
closes, and then prints `closed`. With `limits`, it prints what the
server's transport parameters allow it instead, and exits 0: the
datagram frame size (`None`: no datagrams), and the flow-control windows
of the connection and of a stream. With `address`, it prints what it saw
of the server's address validation and migration instead, and exits 0:
the type of the first packet it received from the server (`retry` when
the server made it prove its address before the handshake), and whether
the server's transport parameters disable active migration.

With `second`, after the PUBACK it waits for a line on stdin, then opens a
second stream and sends CONNECT on it: it prints `connack` if the broker
answers within five seconds, `no connack` otherwise.

With `streams`, after the PUBACK it opens a second stream and sends
CONNECT on it at once, prints `connack` or `no connack` as `second` does,
then publishes again on the first stream and prints `puback` once the
broker acknowledged that too.

With `unanswered`, it sends CONNECT and a QoS 0 PUBLISH without waiting
for any answer and prints `sent`, sends another PUBLISH a moment later
and prints `sent` again, then stays connected until the connection
closes, and prints `closed`.

usage: aioquic_mqtt.py HOST PORT CERT_DIR TOPIC PAYLOAD
       [hold|limits|address|second|streams|unanswered]
"""

import asyncio
import struct
import sys

from aioquic.asyncio.client import connect
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.logger import QuicLogger


def packet(header: int, body: bytes) -> bytes:
    out = bytearray([header])
    n = len(body)
    while True:
        digit, n = n % 128, n // 128
        out.append(digit | (0x80 if n else 0))
        if not n:
            break
    return bytes(out) + body


def string(s: str) -> bytes:
    b = s.encode()
    return struct.pack(">H", len(b)) + b


async def main(host, port, certs, topic, payload, mode):
    config = QuicConfiguration(is_client=True, alpn_protocols=["mqtt"])
    config.load_verify_locations(f"{certs}/ca.pem")
    config.load_cert_chain(f"{certs}/cert.pem", f"{certs}/key.pem")
    config.server_name = "localhost"
    # Offered, so that a server that accepts datagrams says so.
    config.max_datagram_frame_size = 65536
    # aioquic answers a retry itself; its qlog events show whether one came.
    config.quic_logger = QuicLogger()
    async with connect(host, port, configuration=config) as client:
        if mode == "address":
            # connect() returns once the handshake is complete.
            events = config.quic_logger.to_dict()["traces"][0]["events"]
            received = [
                e["data"]["header"]["packet_type"]
                for e in events
                if e["name"] == "transport:packet_received"
            ]
            remote = [
                e["data"]
                for e in events
                if e["name"] == "transport:parameters_set"
                and e["data"]["owner"] == "remote"
            ]
            print(
                f"first-packet={received[0] if received else None}"
                f" disable-active-migration={remote[0]['disable_active_migration']}",
                flush=True,
            )
            return
        if mode == "limits":
            quic = client._quic
            print(
                f"datagrams={quic._remote_max_datagram_frame_size}"
                f" connection-window={quic._remote_max_data}"
                f" stream-window={quic._remote_max_stream_data_bidi_remote}",
                flush=True,
            )
            return
        reader, writer = await client.create_stream()
        # CONNECT: protocol MQTT level 4, clean session, keep-alive 60 s.
        writer.write(packet(0x10, string("MQTT") + bytes([4, 2, 0, 60]) + string("quic-peer")))
        if mode == "unanswered":
            for _ in range(2):
                writer.write(packet(0x30, string(topic) + payload.encode()))
                # Long enough for the packets to leave.
                await asyncio.sleep(0.3)
                print("sent", flush=True)
            while await reader.read(4096):
                pass
            print("closed", flush=True)
            return
        connack = await asyncio.wait_for(reader.readexactly(4), 30)
        if connack[0] != 0x20 or connack[3] != 0:
            raise SystemExit(f"bad CONNACK {connack.hex()}")
        # PUBLISH, QoS 1, retained, packet id 1.
        writer.write(packet(0x33, string(topic) + struct.pack(">H", 1) + payload.encode()))
        puback = await asyncio.wait_for(reader.readexactly(4), 30)
        if puback != bytes([0x40, 2, 0, 1]):
            raise SystemExit(f"bad PUBACK {puback.hex()}")
        print("puback", flush=True)
        if mode in ("second", "streams"):
            if mode == "second":
                await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
            reader2, writer2 = await client.create_stream()
            writer2.write(packet(0x10, string("MQTT") + bytes([4, 2, 0, 60]) + string("second")))
            try:
                await asyncio.wait_for(reader2.readexactly(4), 5)
                print("connack", flush=True)
            except (asyncio.TimeoutError, asyncio.IncompleteReadError):
                print("no connack", flush=True)
            if mode == "streams":
                writer.write(packet(0x32, string(topic) + struct.pack(">H", 2) + payload.encode()))
                puback = await asyncio.wait_for(reader.readexactly(4), 30)
                if puback != bytes([0x40, 2, 0, 2]):
                    raise SystemExit(f"bad PUBACK {puback.hex()}")
                print("puback", flush=True)
            return
        if mode == "hold":
            while await reader.read(4096):
                pass
            print("closed", flush=True)
            return
        writer.write(packet(0xE0, b""))
        writer.write_eof()
        await asyncio.sleep(0.1)


host, port, certs, topic, payload = sys.argv[1:6]
mode = sys.argv[6] if len(sys.argv) > 6 else None
asyncio.run(main(host, int(port), certs, topic, payload, mode))
