"""``python -m workbench`` runs the console script."""

from workbench.app.cli import main

raise SystemExit(main())
