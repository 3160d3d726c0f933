"""A Modbus/TCP server (pymodbus) on loopback, plain TCP: the PLC behind
Palisade. Holding registers 0.. hold 17, 42, 7, 1999.

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


async def main(port):
    # The context adds 1 to every address (Modbus's 1-based data model),
    # so register 0 is the block's value at 1.
    block = ModbusSequentialDataBlock(1, [17, 42, 7, 1999])
    context = ModbusServerContext(slaves=ModbusSlaveContext(hr=block), single=True)
    await StartAsyncTcpServer(context=context, address=("127.0.0.1", port))


asyncio.run(main(int(sys.argv[1])))
