"""Prefetch: a patient's priors pulled from the PACS before anyone asks for them."""
