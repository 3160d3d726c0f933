"""A TCP relay that records what real clients and servers say: it listens
on loopback, relays each connection to the target port, and writes the
bytes of each direction of connection N to OUT.N.up (client to server) and
OUT.N.down (server to client).

usage: record.py LISTEN_PORT TARGET_PORT OUT
"""

import asyncio
import itertools
import sys

listen, target, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
numbers = itertools.count()


async def pump(reader, writer, path):
    with open(path, "wb") as f:
        while data := await reader.read(65536):
            f.write(data)
            f.flush()
            writer.write(data)
            await writer.drain()
    writer.close()


async def relay(client_reader, client_writer):
    n = next(numbers)
    server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target)
    await asyncio.gather(
        pump(client_reader, server_writer, f"{out}.{n}.up"),
        pump(server_reader, client_writer, f"{out}.{n}.down"),
        return_exceptions=True,
    )


async def main():
    server = await asyncio.start_server(relay, "127.0.0.1", listen)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


asyncio.run(main())
