"""The model layer: everything that touches open_clip — adapters, attention kinds, the surgery forward,
introspection, loading, preprocessing and the shipped models. Imports nothing above it."""
