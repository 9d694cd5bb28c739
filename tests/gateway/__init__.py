"""The daemon's rooms and the whole gateway: real daemons, the simulator and Redis on loopback."""
