"""Images + labels -> similarities, maps and points: image input, text features, feature surgery,
explain, multimodal (per-word) maps, text -> SAM points."""
