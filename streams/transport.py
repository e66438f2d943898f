"""Running the workers' Lua scripts on Redis: by SHA, loaded once, pipelined on one connection.

One batch sends a few script calls with tens of thousands of arguments: they are packed by
hiredis and sent on one connection as they are built, and the replies read at the end. This
reaches into redis-py's connection pool (``get_connection``/``send_packed_command``/
``read_response``) because its pipeline packs and parses each command in Python, several times
slower for such calls; redis-py is bounded in pyproject, and tests/test_state.py runs it against
the real server.

On Redis Cluster each call goes to the node serving its first key's hash slot (every key one call
touches shares that slot, segstream/keys.py): one connection per node, the calls of each node
pipelined on it, every node's replies read at the end.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError

__all__ = ["ScriptLost", "ScriptRunner"]


class ScriptLost(aioredis.ConnectionError):
    """A script vanished from Redis; the batch is retried (every write is idempotent)."""


def _noscript(reply) -> bool:
    # redis-py maps Redis's NOSCRIPT error to NoScriptError, whose text no longer says NOSCRIPT
    return isinstance(reply, NoScriptError)


def _moved(reply) -> bool:
    # redis-py's parser maps a cluster redirection to its own error types; a plain reply read off
    # the connection (as here) may also carry it as text
    return isinstance(reply, aioredis.ResponseError) and str(reply).split(" ", 1)[0] in ("MOVED", "ASK", "TRYAGAIN")


Call = tuple[list[str], list]  # a script call's keys (the first places it on a cluster) and arguments


class ScriptRunner:
    """Runs Lua scripts (their source) on ``client`` by SHA, loading each once (again if Redis lost it)."""

    def __init__(self, client: aioredis.Redis | RedisCluster) -> None:
        self.client = client
        self._sha: dict[str, str] = {}  # the scripts loaded: source -> SHA1, as SCRIPT LOAD answered

    async def run(self, script: str, keys: list[str], args: list) -> Any:
        """Run a script by its SHA (loading it once; again if Redis lost it); its reply."""
        return (await self.run_many(script, [(keys, args)]))[0]

    async def run_many(self, script: str, calls: Iterable[Call]) -> list:
        """Run one script call per ``(keys, arguments)`` of ``calls``, pipelined on one connection
        (on a cluster, one per node).

        Each call is sent as soon as ``calls`` yields it, so Redis runs one while the next is
        built (a lazy iterable overlaps the worker's CPU with Redis's), and the replies are read at
        the end: one wait for all. Commands are packed by hiredis, and replies parsed by it: a
        batch has tens of thousands of arguments, which redis-py's pure-Python packer and
        per-command pipeline replies spend several times longer on. A call that found the script
        missing (Redis restarted, or SCRIPT FLUSH) did not run: it is sent again after a reload.
        """
        if script not in self._sha:
            self._sha[script] = await self.client.script_load(script)  # a cluster loads it on every primary
        sha = self._sha[script]
        packed: list[tuple[str, bytes]] = []

        def commands():
            for keys, args in calls:
                packed.append((keys[0], hiredis.pack_command(("EVALSHA", sha, len(keys), *keys, *args))))
                yield packed[-1]

        replies = await self._pipelined(commands())
        unrun = [index for index, reply in enumerate(replies) if _noscript(reply)]
        if unrun:
            await self.client.script_load(script)
            for index, reply in zip(unrun, await self._pipelined(packed[i] for i in unrun), strict=True):
                replies[index] = reply
        for reply in replies:
            if _noscript(reply):
                raise ScriptLost("Redis keeps losing a script; retrying the batch")
            if _moved(reply) and isinstance(self.client, RedisCluster):
                # slots moved (a resharding, a failover): learn the new map; the batch is retried
                await self.client.nodes_manager.initialize()
                raise ScriptLost(f"Redis Cluster moved a slot ({reply}); retrying the batch")
            if isinstance(reply, aioredis.ResponseError):
                raise reply
        return replies

    async def _pipelined(self, commands: Iterable[tuple[str, bytes]]) -> list:
        """Send each packed ``(key, command)`` as it comes, then read every reply (error replies
        are returned, not raised, so that each connection is read to the end)."""
        if not isinstance(self.client, RedisCluster):
            pool = self.client.connection_pool
            connection = await pool.get_connection()
            try:
                return await self._send_all(((connection, command) for _, command in commands), [connection])
            finally:
                await pool.release(connection)
        if not self.client.nodes_manager.slots_cache:  # a cluster client learns the slots on first use
            await self.client.initialize()
        held: dict[str, tuple[Any, Any]] = {}  # node name -> (node, connection)

        def routed():
            for key, command in commands:
                node = self.client.get_node_from_key(key)
                if node.name not in held:
                    held[node.name] = (node, node.acquire_connection())
                yield held[node.name][1], command

        try:
            return await self._send_all(routed(), [connection for _, connection in held.values()])
        finally:
            for node, connection in held.values():
                node.release(connection)

    @staticmethod
    async def _send_all(commands: Iterable[tuple[Any, bytes]], connections: list) -> list:
        order = []
        try:
            for connection, command in commands:
                await connection.send_packed_command(command)
                order.append(connection)
                if connection not in connections:
                    connections.append(connection)
            replies = []
            for connection in order:  # each connection's replies come in the order it was sent
                try:
                    replies.append(await connection.read_response())
                except aioredis.ResponseError as exc:
                    replies.append(exc)
            return replies
        except BaseException:
            for connection in connections:
                await connection.disconnect()  # a half-read reply must not reach the next user
            raise
