"""Networking that knows other libraries' internals, fenced in one place: the ASGI helpers
the daemon and the simulator share, the upstream HTTP/1.1 client, the RESP pipeline and the
uvicorn glue. Nothing here imports the daemon, the store or the commands."""
