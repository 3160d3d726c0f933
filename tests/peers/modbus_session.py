"""One Modbus/TCP Security session (pymodbus's TLS client, unit 1) with a
device certificate, running operations in order and printing one JSON line
for each: {"op": ..., "ok": true, "registers": [...]} or {"op": ...,
"ok": false, "error": ...}. A request the appliance drops goes unanswered
and fails after the timeout; one after the appliance closed the session
fails at once.

The connection and an answer are waited for up to 30 s: on a loaded machine
a TLS handshake and a read through the appliance can take seconds, and a
short timeout would fail a request that was allowed. An operation the
caller expects dropped is marked so, and its answer waited for 2 s only: a
late answer to it is caught by what the server saw, not by this timeout.

usage: modbus_session.py HOST PORT CERT_DIR OP...
  OP is read:ADDRESS:COUNT or write:ADDRESS:VALUE, then :dropped if the
  appliance is expected to drop it
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
PATIENCE = 30
DROPPED = 2
client = ModbusTlsClient(host, port=port, sslctx=context, timeout=PATIENCE, retries=0)
connected = client.connect()
for op in ops:
    kind, address, value, *expected = op.split(":")
    # pymodbus reads each answer with the client's connect timeout.
    client.comm_params.timeout_connect = DROPPED if expected == ["dropped"] else PATIENCE
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
