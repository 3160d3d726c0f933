"""A Modbus/TCP Security client (pymodbus's TLS client, whose framing is
the MBAP header and PDU as over plain Modbus/TCP) with a device certificate: read holding registers
0..COUNT of unit 1 and print them space-separated; exit 1 on failure.

usage: modbus_tls_client.py HOST PORT CERT_DIR COUNT
"""

import ssl
import sys

from pymodbus.client import ModbusTlsClient

host, port, certs, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
context.load_verify_locations(f"{certs}/ca.pem")
context.load_cert_chain(f"{certs}/cert.pem", f"{certs}/key.pem")
# pymodbus 3.8 wraps its socket without a server_hostname, so Python cannot
# match the name; the chain is still verified against the site CA.
context.check_hostname = False
client = ModbusTlsClient(
    host, port=port, sslctx=context, timeout=10, retries=0
)
if not client.connect():
    print("cannot connect", file=sys.stderr)
    sys.exit(1)
try:
    response = client.read_holding_registers(0, count=count, slave=1)
except Exception as e:  # a refused or closed connection
    print(f"read failed: {e}", file=sys.stderr)
    sys.exit(1)
finally:
    client.close()
if response.isError():
    print(f"modbus error: {response}", file=sys.stderr)
    sys.exit(1)
print(" ".join(str(r) for r in response.registers))
