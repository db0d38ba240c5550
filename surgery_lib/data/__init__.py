"""Data: the one annotated-image record, the standard dataset layouts and the sets this project ships."""
