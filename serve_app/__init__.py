"""Ray Serve ingress: the Starlette app (HTTP + WebSocket), auth, the deployment and the CLI."""
