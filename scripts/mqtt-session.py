#!/usr/bin/env python3
"""Write one MQTT 3.1.1 session, device to broker, to stdout: a thermostat
connects, publishes 150 telemetry readings, then publishes to a command
topic it never used and subscribes to everything."""
import sys


def varint(n):
    out = b""
    while True:
        digit, n = n % 128, n // 128
        out += bytes([digit | (0x80 if n else 0)])
        if not n:
            return out


def packet(header, body):
    return bytes([header]) + varint(len(body)) + body


def string(s):
    data = s.encode()
    return len(data).to_bytes(2, "big") + data


stream = packet(0x10, string("MQTT") + bytes([4, 0x02, 0, 60]) + string("thermostat-7"))
for i in range(150):
    reading = f"{{\"t\":{20 + i % 5}.{i % 10}}}".encode()
    stream += packet(0x30, string("site/hall-2/thermostat-7/telemetry") + reading)
stream += packet(0x30, string("site/hall-2/boiler/cmd") + b"{\"setpoint\":95}")
stream += packet(0x82, (1).to_bytes(2, "big") + string("#") + b"\x00")
stream += packet(0xE0, b"")
sys.stdout.buffer.write(stream)
