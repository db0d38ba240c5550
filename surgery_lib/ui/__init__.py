"""Views: figures, overlays, widgets, claim checks and the notebook runner. Nothing in the library imports
this layer (only the command line does)."""
