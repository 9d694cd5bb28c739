"""The state backends against memory://, a real Redis, a real Redis Cluster and Sentinel."""
