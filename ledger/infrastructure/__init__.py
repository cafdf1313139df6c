"""Databases: configuration from a URL, connections for read models, migrations."""
