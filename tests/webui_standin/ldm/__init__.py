"""Stand-in for Stability-AI/stablediffusion ``ldm`` (cf1d67a), the package A1111 puts on ``sys.path``."""
