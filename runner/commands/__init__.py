"""The runner's typer command functions: argument parsing and printing; the work lives in the modules they call."""
