"""The admin API: its route table and token check (``api``), and each feature's routes."""
