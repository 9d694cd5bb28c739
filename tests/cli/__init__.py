"""The operator's commands and the README's quick start, run as a user runs them."""
