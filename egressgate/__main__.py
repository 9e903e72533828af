"""`python -m egressgate` → the CLI."""

from egressgate.cli.main import main

raise SystemExit(main())
