"""`ltc-stream train-default`'s stages, one module per job (the command itself: `..train`). Nothing
here runs when a model samples."""
