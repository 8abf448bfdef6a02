"""The reproducibility package (``coldkeep repro …``)."""
