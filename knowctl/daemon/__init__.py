"""The serving daemon: ASGI app, routes, upstream client, lifecycle, metrics."""
