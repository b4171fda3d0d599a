"""BarcodeMAE: everything that is not the model (data, simulation, embedding, evaluation, export, CLI)."""

__version__ = "0.1.0"
