"""Rendered deployments: schemas, policy checks, real validators and the rendered stack run for real."""
