"""One Modbus/TCP Security session (pymodbus's TLS client, unit 1) with a
device certificate, running operations in order and printing one JSON line
for each: {"op": ..., "ok": true, "registers": [...]} or {"op": ...,
"ok": false, "error": ...}. A request the appliance drops goes unanswered
and fails after the timeout; one after the appliance closed the session
fails at once.

usage: modbus_session.py HOST PORT CERT_DIR OP...
  OP is read:ADDRESS:COUNT or write:ADDRESS:VALUE
"""

import json
import ssl
import sys

from pymodbus.client import ModbusTlsClient

host, port, certs, ops = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
context.load_verify_locations(f"{certs}/ca.pem")
context.load_cert_chain(f"{certs}/cert.pem", f"{certs}/key.pem")
# pymodbus 3.8 wraps its socket without a server_hostname, so Python cannot
# match the name; the chain is still verified against the site CA.
context.check_hostname = False
client = ModbusTlsClient(host, port=port, sslctx=context, timeout=2, retries=0)
connected = client.connect()
for op in ops:
    kind, address, value = op.split(":")
    result = {"op": op}
    try:
        if not connected:
            raise ConnectionError("cannot connect")
        if kind == "read":
            response = client.read_holding_registers(int(address), count=int(value), slave=1)
        else:
            response = client.write_register(int(address), int(value), slave=1)
        if response.isError():
            raise RuntimeError(str(response))
        result.update(ok=True, registers=getattr(response, "registers", []))
    except Exception as e:  # dropped (timeout), closed or refused
        result.update(ok=False, error=str(e) or type(e).__name__)
    print(json.dumps(result), flush=True)
client.close()
