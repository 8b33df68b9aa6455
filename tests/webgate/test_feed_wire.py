"""The feed's raw frame writer: pre-encoded frames on the wire when its preconditions hold, aiohttp's
``send_str`` when they do not (permessage-deflate negotiated), closes through aiohttp either way."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import WSCloseCode, WSMsgType, web

from tracker.demo.services import free_port
from tracker.vocabulary import CloseCode
from webgate.feed import frames
from webgate.feed.wire import FrameWriter, close_code, payloads

#: Frames of the three length encodings (7-bit, 16-bit, 64-bit), written joined as the hub does.
MESSAGES = [{"type": "pong"}, {"type": "event", "data": "x" * 300}, {"type": "snapshot", "tasks": ["y" * 70_000]}]


@pytest.fixture
async def wire_server() -> AsyncIterator[Callable[[bool], Any]]:
    """A real aiohttp server whose handler writes MESSAGES through a FrameWriter, then closes with 4001."""
    writers: list[FrameWriter] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(compress=request.query.get("compress") == "1")
        await ws.prepare(request)
        writer = FrameWriter(ws, request.transport)
        writers.append(writer)
        writer.write(b"".join(frames.encode(m) for m in MESSAGES))
        await writer.close(CloseCode.TOKEN_EXPIRED, "token expired")
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()

    async def talk(compress: bool) -> tuple[FrameWriter, list[Any], int | None, str | None]:
        url = f"http://127.0.0.1:{port}/ws?compress={int(compress)}"
        async with aiohttp.ClientSession() as session, session.ws_connect(url, compress=15 if compress else 0) as ws:
            got = []
            async for msg in ws:
                assert msg.type is WSMsgType.TEXT
                got.append(json.loads(msg.data))
            extensions = ws._response.headers.get("Sec-WebSocket-Extensions")
            return writers[-1], got, ws.close_code, extensions

    yield talk
    await runner.cleanup()


async def test_raw_path_without_compression(wire_server: Callable[[bool], Any]) -> None:
    writer, got, code, extensions = await wire_server(False)
    assert writer.raw and writer.reason is None and extensions is None
    assert got == MESSAGES and code == CloseCode.TOKEN_EXPIRED


async def test_falls_back_to_send_str_when_deflate_is_negotiated(wire_server: Callable[[bool], Any]) -> None:
    writer, got, code, extensions = await wire_server(True)
    # A raw frame would lack RSV1 on a deflate connection: the client would fail the connection.
    assert "permessage-deflate" in (extensions or "")
    assert not writer.raw and "permessage-deflate" in (writer.reason or "")
    assert got == MESSAGES and code == CloseCode.TOKEN_EXPIRED


async def test_not_prepared_is_not_raw() -> None:
    writer = FrameWriter(web.WebSocketResponse(), None)
    assert not writer.raw and writer.reason == "the WebSocket is not prepared"
    assert writer.buffered() == 0 and writer.is_closing()
    await asyncio.sleep(0)


def test_payloads_and_close_codes() -> None:
    joined = b"".join(frames.encode(m) for m in MESSAGES)
    assert [json.loads(p) for p in payloads(joined)] == MESSAGES
    with pytest.raises(ValueError):
        list(payloads(b"\x82\x01x"))  # a binary frame is not the writer's
    assert close_code(1013) is WSCloseCode.TRY_AGAIN_LATER and close_code(1001) is WSCloseCode.GOING_AWAY
    assert close_code(4001) is CloseCode.TOKEN_EXPIRED
