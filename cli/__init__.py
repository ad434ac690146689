"""Command-line entry points for taskexec."""
