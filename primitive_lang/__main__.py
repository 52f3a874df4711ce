"""``python -m primitive_lang check ...`` (see cli.py)."""

from .cli import main

raise SystemExit(main())
