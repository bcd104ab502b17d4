"""The response cache: exact and semantic."""
