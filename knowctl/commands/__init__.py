"""Thin command modules: parse options, call a client or a core function, render the result."""
