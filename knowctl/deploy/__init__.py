"""Deployment from templates: values, rendering, validation, and the Docker image.

Nothing here is imported by ``knowctl --help``: the command module imports these lazily,
and these modules import jinja2, yaml, jsonschema and docker inside their functions.
"""
