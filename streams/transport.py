"""Running the workers' Lua scripts on Redis: by SHA, loaded once, pipelined on one connection.

One batch sends a few script calls with tens of thousands of arguments: they are packed by
hiredis and sent on one connection as they are built, and the replies read at the end. This
reaches into redis-py's connection pool (``get_connection``/``send_packed_command``/
``read_response``) because its pipeline packs and parses each command in Python, several times
slower for such calls; redis-py is bounded in pyproject, and tests/test_state.py runs it against
the real server.
"""

from __future__ import annotations

from collections.abc import Iterable

import hiredis
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

__all__ = ["ScriptLost", "ScriptRunner"]


class ScriptLost(aioredis.ConnectionError):
    """A script vanished from Redis; the batch is retried (every write is idempotent)."""


def _noscript(reply) -> bool:
    # redis-py maps Redis's NOSCRIPT error to NoScriptError, whose text no longer says NOSCRIPT
    return isinstance(reply, NoScriptError)


class ScriptRunner:
    """Runs Lua scripts (their source) on ``client`` by SHA, loading each once (again if Redis lost it)."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self._sha: dict[str, str] = {}  # the scripts loaded: source -> SHA1, as SCRIPT LOAD answered

    async def run(self, script: str, args: list) -> list:
        """Run a script by its SHA (loading it once; again if Redis lost it); its reply."""
        return (await self.run_many(script, [args]))[0]

    async def run_many(self, script: str, calls: Iterable[list]) -> list:
        """Run one script call per argument list of ``calls``, pipelined on one connection.

        Each call is sent as soon as ``calls`` yields it, so Redis runs one while the next is
        built (a lazy iterable overlaps the worker's CPU with Redis's), and the replies are read at
        the end: one wait for all. Commands are packed by hiredis, and replies parsed by it: a
        batch has tens of thousands of arguments, which redis-py's pure-Python packer and
        per-command pipeline replies spend several times longer on. A call that found the script
        missing (Redis restarted, or SCRIPT FLUSH) did not run: it is sent again after a reload.
        """
        if script not in self._sha:
            self._sha[script] = await self.client.script_load(script)
        sha = self._sha[script]
        packed: list[bytes] = []

        def commands():
            for args in calls:
                packed.append(hiredis.pack_command(("EVALSHA", sha, 0, *args)))
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
            if isinstance(reply, aioredis.ResponseError):
                raise reply
        return replies

    async def _pipelined(self, commands: Iterable[bytes]) -> list:
        """Send each packed command as it comes, then read every reply (error replies are
        returned, not raised, so that the connection is read to the end)."""
        pool = self.client.connection_pool
        connection = await pool.get_connection()
        try:
            sent = 0
            for command in commands:
                await connection.send_packed_command(command)
                sent += 1
            replies = []
            for _ in range(sent):
                try:
                    replies.append(await connection.read_response())
                except aioredis.ResponseError as exc:
                    replies.append(exc)
            return replies
        except BaseException:
            await connection.disconnect()  # a half-read reply must not reach the next user
            raise
        finally:
            await pool.release(connection)
