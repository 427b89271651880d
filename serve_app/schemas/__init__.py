"""Request and answer bodies as strict pydantic models, one module per area (serve_app/schemas/base.py
says how a refused value becomes its documented error code)."""
