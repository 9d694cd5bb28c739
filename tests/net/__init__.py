"""knowctl.net: the upstream HTTP/1.1 client and the gateway's HTTP protocol, over loopback sockets."""
