"""`python -m loopsync` is the `loopsync` command."""

from .cli import main

raise SystemExit(main())
