"""Stateful Ray actors (one module per kind) and the shard substrate they share."""
