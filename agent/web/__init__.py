"""DICOMweb client: settings, authentication, STOW-RS (PS3.18) over requests."""
