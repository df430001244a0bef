"""cdsim: a local AWS CodeDeploy agent.

The public API; the CLI (agent.cli) is a thin layer over these functions.
"""
__version__ = "0.1.0"

__all__ = ["__version__"]
