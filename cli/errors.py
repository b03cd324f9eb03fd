class CliError(Exception):
    """A failure the CLI reports in one line, with a non-zero exit."""
