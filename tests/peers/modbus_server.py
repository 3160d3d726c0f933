"""A Modbus/TCP server (pymodbus) on loopback, plain TCP: the PLC behind
Palisade. Holding registers 0..199 hold 17, 42, 7, 1999, then 0, 1, 2, ...
Every access that reaches the registers is printed on stdout as
`read ADDRESS COUNT` or `write ADDRESS VALUE...` (Modbus's 0-based PDU
addresses), so a test sees what got through.

usage: modbus_server.py PORT
"""

import asyncio
import sys

from pymodbus.datastore import (
    ModbusSequentialDataBlock,
    ModbusServerContext,
    ModbusSlaveContext,
)
from pymodbus.server import StartAsyncTcpServer


class LoggedBlock(ModbusSequentialDataBlock):
    # The context adds 1 to every address (Modbus's 1-based data model), so
    # PDU address 0 is the block's address 1.
    def getValues(self, address, count=1):
        print(f"read {address - 1} {count}", flush=True)
        return super().getValues(address, count)

    def setValues(self, address, values):
        shown = " ".join(str(v) for v in (values if isinstance(values, list) else [values]))
        print(f"write {address - 1} {shown}", flush=True)
        return super().setValues(address, values)


async def main(port):
    block = LoggedBlock(1, [17, 42, 7, 1999] + list(range(196)))
    context = ModbusServerContext(slaves=ModbusSlaveContext(hr=block), single=True)
    await StartAsyncTcpServer(context=context, address=("127.0.0.1", port))


asyncio.run(main(int(sys.argv[1])))
