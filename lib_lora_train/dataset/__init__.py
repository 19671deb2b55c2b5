"""From uploaded inputs to a de-identified, captioned training set."""
