"""`python -m serve_app.cli`: the same as the `raytenant` command."""
import sys

from serve_app.cli.main import main

sys.exit(main())
