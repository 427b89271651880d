"""Persistence: the async engine, the tables, the repositories and the migrations."""
