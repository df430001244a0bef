"""python -m agent: the cdsim command line."""
from agent.cli import main

raise SystemExit(main())
