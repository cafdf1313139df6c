"""Use cases: commands in, aggregates loaded and saved, outcomes out."""
