"""uvicorn's HTTP protocol, answering requests it cannot parse in Google's error shape.

uvicorn refuses malformed HTTP (a control character in a header, a broken request line)
itself, before any ASGI app runs, with a text/plain 400. Clients of a Gemini endpoint
expect ``{"error": {"code", "message", "status"}}`` for every refusal, so this protocol only
changes the body of that one answer.
"""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from knowctl.errors import error_body


class GatewayHttpProtocol(HttpToolsProtocol):
    def send_400_response(self, msg: str) -> None:
        body = error_body(400, f"Malformed HTTP request: {msg}")
        content = [STATUS_LINE[400]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend(
            [
                b"content-type: application/json; charset=UTF-8\r\n",
                b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                b"connection: close\r\n",
                b"\r\n",
                body,
            ]
        )
        self.transport.write(b"".join(content))
        self.transport.close()
