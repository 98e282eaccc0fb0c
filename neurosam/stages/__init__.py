"""One module per stage: its declaration, its planning rules and its block function."""
