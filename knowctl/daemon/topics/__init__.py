"""The topic API (``GET /topics/{topic}``) and its optional CDN purge hook."""
