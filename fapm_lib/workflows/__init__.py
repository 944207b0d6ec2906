"""Workflows behind the commands: one category from options (fit, evaluate), many categories
(here or on Dask), notebooks per category (papermill), FAPM vs PatchCore, predictions to files,
the demo."""
