"""Redis backends (single, Cluster, Sentinel) over one pipelined connection per server."""
