"""The DICOM vocabulary every other part speaks: status codes by name, the information
models and their levels, and the presentation-context policy with its SOP class tables.

It imports nothing else from ``agent``, so any module may import it.
"""
