"""edge-agent: a DICOM agent for the box beside a CT or MRI."""

__version__ = "0.1.0"
