"""Load and store stalls through real daemons (wrk, CLIENT PAUSE)."""
