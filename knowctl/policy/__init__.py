"""Pure policy: no I/O, no clock reads, no globals. Clocks and randomness are passed in."""
