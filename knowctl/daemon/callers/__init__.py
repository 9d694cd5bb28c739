"""Who is calling and how much they may call: identity, per-user windows, gateway keys."""
